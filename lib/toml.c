/* toml: TOML v1.0.0 text to and from cJSON (see lib/toml.h for the mapping).
 * Entry points: toml_parse, toml_encode.
 *
 * The parser is a single pass over the bytes after an up-front UTF-8 check.
 * A side table (node_map, a hash on parent pointer and key) finds a table's
 * keys in O(1) and remembers how each table or array came to be: implicitly
 * through a [a.b] header, defined by a header, created by dotted keys,
 * written inline, or made by [[...]]; the rules about redefinition follow
 * from those flags.  It fails with "line N: reason" for the first error and
 * frees everything it built.  The encoder writes into a growing buffer and
 * fails with a reason for values TOML cannot hold.  Neither logs; memory
 * exhaustion aborts (lib/xalloc.h). */
#include "lib/toml.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* shared helpers */

/* a growing NUL-terminated byte buffer */
struct sbuf {
	char *p; /* owned */
	size_t len;
	size_t cap;
};

static void sb_reserve(struct sbuf *b, size_t n)
{
	if (b->len + n + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + n + 1)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
	b->p[b->len] = '\0';
}

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_putc(struct sbuf *b, char c)
{
	sb_put(b, &c, 1);
}

static void sb_puts(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void sb_truncate(struct sbuf *b, size_t len)
{
	b->len = len;
	if (b->p)
		b->p[len] = '\0';
}

static void sb_free(struct sbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void sb_put_utf8(struct sbuf *b, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	sb_put(b, u, n);
}

/* Offset of the first byte that does not start a well-formed UTF-8
 * sequence (overlong forms, surrogates and code points past U+10FFFF are
 * ill-formed), or len when all is well. */
static size_t utf8_check(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t n;
		unsigned char lo = 0x80, hi = 0xBF;
		if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 2;
			if (c == 0xE0)
				lo = 0xA0;
			else if (c == 0xED)
				hi = 0x9F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 3;
			if (c == 0xF0)
				lo = 0x90;
			else if (c == 0xF4)
				hi = 0x8F;
		} else {
			return i;
		}
		if (len - i <= n)
			return i;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return i;
		i += n + 1;
	}
	return len;
}

/* Untrusted key text for an error message: printable ASCII kept, the rest
 * as \xHH, cut with "..." to fit out (outlen >= 4) */
static const char *show(const char *k, char *out, size_t outlen)
{
	size_t o = 0; /* invariant: o + 4 <= outlen */
	for (const unsigned char *s = (const unsigned char *)k; *s; s++) {
		char tmp[5];
		size_t n = 1;
		tmp[0] = (char)*s;
		if (*s < 0x20 || *s >= 0x7F || *s == '\\' || *s == '\'') {
			int w = snprintf(tmp, sizeof tmp, "\\x%02X", *s);
			n = (w > 0 && (size_t)w < sizeof tmp) ? (size_t)w : 0;
		}
		if (o + n + 4 > outlen) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, tmp, n);
		o += n;
	}
	out[o] = '\0';
	return out;
}

/* Numbers are read (strtod) and written (%g) with a '.', whatever the
 * process locale: a Lua policy may call os.setlocale.  uselocale switches
 * this thread only; if newlocale fails we go on in the current locale. */
struct c_numeric {
	locale_t c;
	locale_t old;
};

static void c_numeric_enter(struct c_numeric *n)
{
	n->c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
	n->old = n->c ? uselocale(n->c) : (locale_t)0;
}

static void c_numeric_leave(struct c_numeric *n)
{
	if (!n->c)
		return;
	uselocale(n->old);
	freelocale(n->c);
}

static cJSON *must(cJSON *j)
{
	if (!j)
		abort(); /* cJSON's malloc failed: same policy as xalloc */
	return j;
}

static void add_member(cJSON *obj, const char *key, cJSON *v)
{
	if (!cJSON_AddItemToObject(obj, key, v))
		abort(); /* only when cJSON cannot copy the key */
}

static bool is_bare_key_char(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* control characters TOML forbids in strings and comments: all but tab */
static bool is_ctrl(int c)
{
	return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7F;
}

/* ------------------------------------------------------------------ */
/* parser: the key index */

enum {
	F_IMPLICIT = 1, /* table made on the way to a [x.y] header, not yet defined */
	F_DEFINED = 2,  /* table named by a header, or a [[...]] element */
	F_DOTTED = 4,   /* table made by a dotted key (a.b = 1) */
	F_INLINE = 8,   /* inline table: closed for good */
	F_AOT = 16,     /* array made by [[...]] (else a static array) */
};

struct node_ent {
	const cJSON *parent;
	cJSON *child; /* NULL: empty slot; child->string is the key */
	cJSON *last;  /* for F_AOT arrays: the newest element */
	unsigned flags;
};

struct node_map {
	struct node_ent *slot; /* owned */
	size_t cap;            /* a power of two */
	size_t used;
};

static size_t map_hash(const cJSON *parent, const char *key)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)parent;
	h *= 1099511628211ULL;
	for (const unsigned char *s = (const unsigned char *)key; *s; s++) {
		h ^= *s;
		h *= 1099511628211ULL;
	}
	return (size_t)(h ^ (h >> 31));
}

static struct node_ent *map_find(struct node_map *m, const cJSON *parent, const char *key)
{
	if (!m->cap)
		return NULL;
	size_t i = map_hash(parent, key) & (m->cap - 1);
	while (m->slot[i].child) {
		if (m->slot[i].parent == parent && strcmp(m->slot[i].child->string, key) == 0)
			return &m->slot[i];
		i = (i + 1) & (m->cap - 1);
	}
	return NULL;
}

static struct node_ent *map_slot(struct node_map *m, const cJSON *parent, const char *key)
{
	size_t i = map_hash(parent, key) & (m->cap - 1);
	while (m->slot[i].child)
		i = (i + 1) & (m->cap - 1);
	return &m->slot[i];
}

/* Index child (already added to parent); the pointer is valid until the
 * next map_add. */
static struct node_ent *map_add(struct node_map *m, const cJSON *parent, cJSON *child,
				unsigned flags)
{
	if ((m->used + 1) * 2 > m->cap) {
		struct node_map n = { NULL, m->cap ? m->cap * 2 : 64, m->used };
		n.slot = xcalloc(n.cap, sizeof *n.slot);
		for (size_t i = 0; i < m->cap; i++)
			if (m->slot[i].child)
				*map_slot(&n, m->slot[i].parent, m->slot[i].child->string) = m->slot[i];
		free(m->slot);
		*m = n;
	}
	struct node_ent *e = map_slot(m, parent, child->string);
	e->parent = parent;
	e->child = child;
	e->last = NULL;
	e->flags = flags;
	m->used++;
	return e;
}

/* ------------------------------------------------------------------ */
/* parser: reading */

struct parser {
	const char *s;
	size_t len;
	size_t pos;
	long line;
	char *err;
	size_t errlen;
	bool failed;
	cJSON *root;
	cJSON *cur;    /* the table key/value lines go into */
	int cur_depth; /* its depth (root 0) */
	struct node_map map;
};

/* dotted key being read: parts are owned */
struct key {
	char **part;
	int n;
	int cap;
};

static void key_free(struct key *k)
{
	for (int i = 0; i < k->n; i++)
		free(k->part[i]);
	free(k->part);
	k->part = NULL;
	k->n = k->cap = 0;
}

static int fail(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct parser *p, const char *fmt, ...)
{
	if (p->failed)
		return -1;
	p->failed = true;
	if (!p->err || !p->errlen)
		return -1;
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		msg[0] = '\0';
	/* a message cut short still says what went wrong */
	(void)snprintf(p->err, p->errlen, "line %ld: %s", p->line, msg);
	return -1;
}

static int peek_at(const struct parser *p, size_t off)
{
	return p->pos + off < p->len ? (unsigned char)p->s[p->pos + off] : -1;
}

static int peek(const struct parser *p)
{
	return peek_at(p, 0);
}

static bool at_newline(const struct parser *p)
{
	return peek(p) == '\n' || (peek(p) == '\r' && peek_at(p, 1) == '\n');
}

static void eat_newline(struct parser *p)
{
	if (peek(p) == '\r')
		p->pos++;
	p->pos++;
	p->line++;
}

static void skip_ws(struct parser *p)
{
	while (peek(p) == ' ' || peek(p) == '\t')
		p->pos++;
}

/* at '#': skip to the end of the line, leaving the newline */
static int skip_comment(struct parser *p)
{
	p->pos++;
	while (p->pos < p->len && p->s[p->pos] != '\n') {
		int c = (unsigned char)p->s[p->pos];
		if (c == '\r' && peek_at(p, 1) == '\n')
			break;
		if (is_ctrl(c))
			return fail(p, "control character U+%04X in comment", (unsigned)c);
		p->pos++;
	}
	return 0;
}

/* spaces, newlines and comments, as allowed inside arrays */
static int skip_blank(struct parser *p)
{
	for (;;) {
		skip_ws(p);
		if (peek(p) == '#') {
			if (skip_comment(p) < 0)
				return -1;
		} else if (at_newline(p)) {
			eat_newline(p);
		} else {
			return 0;
		}
	}
}

/* after a value or a header: optional comment, then a newline or the end */
static int end_of_line(struct parser *p, const char *what)
{
	skip_ws(p);
	if (peek(p) == '#' && skip_comment(p) < 0)
		return -1;
	if (peek(p) == -1)
		return 0;
	if (at_newline(p)) {
		eat_newline(p);
		return 0;
	}
	return fail(p, "unexpected text after %s", what);
}

/* ------------------------------------------------------------------ */
/* parser: strings */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* at a backslash in a basic string */
static int parse_escape(struct parser *p, struct sbuf *b)
{
	int c = peek_at(p, 1);
	int ndig = 0;
	switch (c) {
	case 'b': sb_putc(b, '\b'); break;
	case 't': sb_putc(b, '\t'); break;
	case 'n': sb_putc(b, '\n'); break;
	case 'f': sb_putc(b, '\f'); break;
	case 'r': sb_putc(b, '\r'); break;
	case '"': sb_putc(b, '"'); break;
	case '\\': sb_putc(b, '\\'); break;
	case 'u': ndig = 4; break;
	case 'U': ndig = 8; break;
	case -1:
		return fail(p, "unterminated string");
	default:
		if (c > 0x20 && c < 0x7F)
			return fail(p, "invalid escape '\\%c' in string", c);
		return fail(p, "invalid escape in string");
	}
	p->pos += 2;
	if (!ndig)
		return 0;
	uint32_t cp = 0;
	for (int i = 0; i < ndig; i++) {
		int h = hexval(peek(p));
		if (h < 0)
			return fail(p, "\\%c escape needs %d hex digits", ndig == 4 ? 'u' : 'U', ndig);
		cp = cp << 4 | (uint32_t)h;
		p->pos++;
	}
	if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return fail(p, "escape U+%04X is not a Unicode scalar value", (unsigned)cp);
	sb_put_utf8(b, cp);
	return 0;
}

/* at '"' or '\'': a one-line basic or literal string */
static int parse_string1(struct parser *p, struct sbuf *b)
{
	int q = peek(p);
	p->pos++;
	for (;;) {
		int c = peek(p);
		if (c == -1 || at_newline(p))
			return fail(p, "unterminated string");
		if (c == q) {
			p->pos++;
			return 0;
		}
		if (c == '\\' && q == '"') {
			if (parse_escape(p, b) < 0)
				return -1;
			continue;
		}
		if (is_ctrl(c))
			return fail(p, "control character U+%04X in string", (unsigned)c);
		sb_putc(b, (char)c);
		p->pos++;
	}
}

/* at '"""' or '\'\'\'': a multi-line basic or literal string */
static int parse_string_ml(struct parser *p, struct sbuf *b)
{
	int q = peek(p);
	p->pos += 3;
	if (at_newline(p))
		eat_newline(p);
	for (;;) {
		int c = peek(p);
		if (c == -1)
			return fail(p, "unterminated multi-line string");
		if (c == q && peek_at(p, 1) == q && peek_at(p, 2) == q) {
			size_t n = 3;
			while (peek_at(p, n) == q)
				n++;
			if (n > 5)
				return fail(p, "too many quotes closing a multi-line string");
			for (size_t i = 3; i < n; i++)
				sb_putc(b, (char)q);
			p->pos += n;
			return 0;
		}
		if (c == '\\' && q == '"') {
			size_t j = 1;
			while (peek_at(p, j) == ' ' || peek_at(p, j) == '\t')
				j++;
			if (peek_at(p, j) == '\n' || (peek_at(p, j) == '\r' && peek_at(p, j + 1) == '\n')) {
				/* line-ending backslash: drop it and all blank space after */
				p->pos += j;
				for (;;) {
					if (peek(p) == ' ' || peek(p) == '\t')
						p->pos++;
					else if (at_newline(p))
						eat_newline(p);
					else
						break;
				}
				continue;
			}
			if (parse_escape(p, b) < 0)
				return -1;
			continue;
		}
		if (at_newline(p)) {
			sb_putc(b, '\n');
			eat_newline(p);
			continue;
		}
		if (is_ctrl(c))
			return fail(p, "control character U+%04X in string", (unsigned)c);
		sb_putc(b, (char)c);
		p->pos++;
	}
}

/* any string form; fills b (reset first) */
static int parse_string(struct parser *p, struct sbuf *b, bool allow_ml)
{
	int q = peek(p);
	int rc;
	sb_truncate(b, 0);
	sb_reserve(b, 0);
	if (peek_at(p, 1) == q && peek_at(p, 2) == q) {
		if (!allow_ml)
			return fail(p, "a key cannot be a multi-line string");
		rc = parse_string_ml(p, b);
	} else {
		rc = parse_string1(p, b);
	}
	if (rc < 0)
		return -1;
	if (memchr(b->p, '\0', b->len))
		return fail(p, "U+0000 in a string is not supported");
	return 0;
}

/* ------------------------------------------------------------------ */
/* parser: keys */

static int parse_simple_key(struct parser *p, char **out)
{
	int c = peek(p);
	if (c == '"' || c == '\'') {
		struct sbuf b = { 0 };
		if (parse_string(p, &b, false) < 0) {
			sb_free(&b);
			return -1;
		}
		*out = b.p;
		return 0;
	}
	size_t start = p->pos;
	while (is_bare_key_char(peek(p)))
		p->pos++;
	if (p->pos == start) {
		if (c == -1 || at_newline(p) || c == '=' || c == ']' || c == '}' || c == ',' ||
		    c == '#')
			return fail(p, "expected a key");
		if (c >= 0x20 && c < 0x7F)
			return fail(p, "invalid character '%c' in key", c);
		return fail(p, "invalid character in key");
	}
	*out = xstrndup(p->s + start, p->pos - start);
	return 0;
}

/* key ( '.' key )*, with blanks around the dots */
static int parse_key(struct parser *p, struct key *k)
{
	for (;;) {
		if (k->n >= TOML_MAX_DEPTH)
			return fail(p, "key has more than %d parts", TOML_MAX_DEPTH);
		if (k->n == k->cap) {
			k->cap = k->cap ? k->cap * 2 : 4;
			k->part = xrealloc(k->part, (size_t)k->cap * sizeof *k->part);
		}
		if (parse_simple_key(p, &k->part[k->n]) < 0)
			return -1;
		k->n++;
		skip_ws(p);
		if (peek(p) != '.')
			return 0;
		p->pos++;
		skip_ws(p);
	}
}

/* ------------------------------------------------------------------ */
/* parser: numbers, dates and times */

static bool is_num_char(int c)
{
	return is_bare_key_char(c) || c == '+' || c == '.' || c == ':';
}

static bool is_base_digit(int c, int base)
{
	switch (base) {
	case 2: return c == '0' || c == '1';
	case 8: return c >= '0' && c <= '7';
	case 10: return is_digit(c);
	default: return hexval(c) >= 0;
	}
}

/* digit ( '_'? digit )*: the number of digits taken (0 if none), or -1 for
 * an underscore not between two digits */
static long take_digits(const char *t, size_t n, size_t *i, int base)
{
	long count = 0;
	while (*i < n) {
		int c = (unsigned char)t[*i];
		if (c == '_') {
			if (count == 0 || *i + 1 >= n || !is_base_digit((unsigned char)t[*i + 1], base))
				return -1;
			(*i)++;
			continue;
		}
		if (!is_base_digit(c, base))
			break;
		count++;
		(*i)++;
	}
	return count;
}

/* the value of the digits t[0..n) (underscores skipped) if at most limit */
static int digits_value(const char *t, size_t n, int base, uint64_t limit, uint64_t *out)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '_')
			continue;
		uint64_t d = (uint64_t)hexval((unsigned char)t[i]);
		if (v > (limit - d) / (uint64_t)base)
			return -1;
		v = v * (uint64_t)base + d;
	}
	*out = v;
	return 0;
}

static cJSON *parse_number(struct parser *p)
{
	size_t start = p->pos;
	while (is_num_char(peek(p)))
		p->pos++;
	const char *t = p->s + start;
	size_t n = p->pos - start;
	size_t i = 0;
	bool neg = false, sign = false;
	if (n && (t[0] == '+' || t[0] == '-')) {
		sign = true;
		neg = t[0] == '-';
		i = 1;
	}
	if (n - i == 3 && (memcmp(t + i, "inf", 3) == 0 || memcmp(t + i, "nan", 3) == 0)) {
		double v = t[i] == 'i' ? INFINITY : NAN;
		return must(cJSON_CreateNumber(neg ? -v : v));
	}
	if (n - i >= 2 && t[i] == '0' && (t[i + 1] == 'x' || t[i + 1] == 'o' || t[i + 1] == 'b')) {
		int base = t[i + 1] == 'x' ? 16 : t[i + 1] == 'o' ? 8 : 2;
		if (sign) {
			fail(p, "a hexadecimal, octal or binary integer takes no sign");
			return NULL;
		}
		i += 2;
		size_t ds = i;
		long k = take_digits(t, n, &i, base);
		if (k <= 0 || i != n) {
			fail(p, "invalid %s integer",
			     base == 16 ? "hexadecimal" : base == 8 ? "octal" : "binary");
			return NULL;
		}
		uint64_t v;
		if (digits_value(t + ds, n - ds, base, INT64_MAX, &v) < 0) {
			fail(p, "integer out of 64-bit range");
			return NULL;
		}
		return must(cJSON_CreateNumber((double)v));
	}
	size_t int_start = i;
	long k = take_digits(t, n, &i, 10);
	if (k <= 0) {
		fail(p, k < 0 ? "invalid number: '_' must stand between digits" : "invalid value");
		return NULL;
	}
	if (t[int_start] == '0' && k > 1) {
		fail(p, "invalid number: leading zeros are not allowed");
		return NULL;
	}
	size_t int_end = i;
	bool is_float = false;
	if (i < n && t[i] == '.') {
		i++;
		k = take_digits(t, n, &i, 10);
		if (k <= 0) {
			fail(p, k < 0 ? "invalid number: '_' must stand between digits"
				      : "invalid float: a digit must follow '.'");
			return NULL;
		}
		is_float = true;
	}
	if (i < n && (t[i] == 'e' || t[i] == 'E')) {
		i++;
		if (i < n && (t[i] == '+' || t[i] == '-'))
			i++;
		k = take_digits(t, n, &i, 10);
		if (k <= 0) {
			fail(p, k < 0 ? "invalid number: '_' must stand between digits"
				      : "invalid float: the exponent needs digits");
			return NULL;
		}
		is_float = true;
	}
	if (i != n) {
		fail(p, "invalid number");
		return NULL;
	}
	if (!is_float) {
		uint64_t v;
		uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		if (digits_value(t + int_start, int_end - int_start, 10, limit, &v) < 0) {
			fail(p, "integer out of 64-bit range");
			return NULL;
		}
		double d = (double)v;
		return must(cJSON_CreateNumber(neg && v ? -d : d)); /* -0 is 0 */
	}
	char *clean = xmalloc(n + 1);
	size_t o = 0;
	for (size_t j = 0; j < n; j++)
		if (t[j] != '_')
			clean[o++] = t[j];
	clean[o] = '\0';
	errno = 0;
	char *end;
	double d = strtod(clean, &end);
	bool ok = *end == '\0' && !(errno == ERANGE && isinf(d));
	free(clean);
	if (!ok) {
		fail(p, "float out of range");
		return NULL;
	}
	return must(cJSON_CreateNumber(d));
}

static bool digits_at(const struct parser *p, size_t off, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!is_digit(peek_at(p, off + i)))
			return false;
	return true;
}

static int num_at(const struct parser *p, size_t off, size_t n)
{
	int v = 0;
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (peek_at(p, off + i) - '0');
	return v;
}

static bool is_date_at(const struct parser *p)
{
	return digits_at(p, 0, 4) && peek_at(p, 4) == '-' && digits_at(p, 5, 2) &&
	       peek_at(p, 7) == '-' && digits_at(p, 8, 2);
}

static bool is_time_at(const struct parser *p, size_t off)
{
	return digits_at(p, off, 2) && peek_at(p, off + 2) == ':';
}

/* HH:MM:SS[.fraction] */
static int parse_time(struct parser *p)
{
	if (!(digits_at(p, 0, 2) && peek_at(p, 2) == ':' && digits_at(p, 3, 2) &&
	      peek_at(p, 5) == ':' && digits_at(p, 6, 2)))
		return fail(p, "invalid time: expected HH:MM:SS");
	if (num_at(p, 0, 2) > 23 || num_at(p, 3, 2) > 59 || num_at(p, 6, 2) > 60)
		return fail(p, "invalid time: out of range");
	p->pos += 8;
	if (peek(p) == '.') {
		p->pos++;
		if (!is_digit(peek(p)))
			return fail(p, "invalid time: a digit must follow '.'");
		while (is_digit(peek(p)))
			p->pos++;
	}
	return 0;
}

static cJSON *parse_datetime(struct parser *p)
{
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	size_t start = p->pos;
	if (is_date_at(p)) {
		int y = num_at(p, 0, 4), m = num_at(p, 5, 2), d = num_at(p, 8, 2);
		bool leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
		if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && leap)) {
			fail(p, "invalid date: out of range");
			return NULL;
		}
		p->pos += 10;
		bool has_time = false;
		if (peek(p) == 'T' || peek(p) == 't') {
			p->pos++;
			has_time = true;
		} else if (peek(p) == ' ' && is_time_at(p, 1)) {
			p->pos++;
			has_time = true;
		}
		if (has_time) {
			if (parse_time(p) < 0)
				return NULL;
			int c = peek(p);
			if (c == 'Z' || c == 'z') {
				p->pos++;
			} else if (c == '+' || c == '-') {
				if (!(digits_at(p, 1, 2) && peek_at(p, 3) == ':' && digits_at(p, 4, 2)) ||
				    num_at(p, 1, 2) > 23 || num_at(p, 4, 2) > 59) {
					fail(p, "invalid time offset");
					return NULL;
				}
				p->pos += 6;
			}
		}
	} else if (parse_time(p) < 0) {
		return NULL;
	}
	if (is_num_char(peek(p))) {
		fail(p, "invalid date or time");
		return NULL;
	}
	char *text = xstrndup(p->s + start, p->pos - start);
	cJSON *v = must(cJSON_CreateString(text));
	free(text);
	return v;
}

/* ------------------------------------------------------------------ */
/* parser: values and tables */

static cJSON *parse_value(struct parser *p, int depth);

static int parse_keyval(struct parser *p, cJSON *table, int depth);

static cJSON *parse_array(struct parser *p, int depth)
{
	cJSON *arr = must(cJSON_CreateArray());
	p->pos++;
	for (;;) {
		if (skip_blank(p) < 0)
			goto bad;
		if (peek(p) == ']') {
			p->pos++;
			return arr;
		}
		cJSON *v = parse_value(p, depth + 1);
		if (!v)
			goto bad;
		cJSON_AddItemToArray(arr, v);
		if (skip_blank(p) < 0)
			goto bad;
		if (peek(p) == ',') {
			p->pos++;
			continue;
		}
		if (peek(p) == ']') {
			p->pos++;
			return arr;
		}
		if (peek(p) == -1)
			fail(p, "unterminated array");
		else
			fail(p, "expected ',' or ']' in array");
		goto bad;
	}
bad:
	cJSON_Delete(arr);
	return NULL;
}

static cJSON *parse_inline_table(struct parser *p, int depth)
{
	cJSON *t = must(cJSON_CreateObject());
	p->pos++;
	skip_ws(p);
	if (peek(p) == '}') {
		p->pos++;
		return t;
	}
	for (;;) {
		skip_ws(p);
		if (peek(p) == '}') {
			fail(p, "trailing comma in inline table");
			goto bad;
		}
		if (parse_keyval(p, t, depth) < 0)
			goto bad;
		skip_ws(p);
		if (peek(p) == ',') {
			p->pos++;
			continue;
		}
		if (peek(p) == '}') {
			p->pos++;
			return t;
		}
		if (at_newline(p) || peek(p) == '#')
			fail(p, "inline table must close on the line it opens");
		else if (peek(p) == -1)
			fail(p, "unterminated inline table");
		else
			fail(p, "expected ',' or '}' in inline table");
		goto bad;
	}
bad:
	/* keys indexed under t stay in the map, harmless: the parse fails */
	cJSON_Delete(t);
	return NULL;
}

static bool match_word(const struct parser *p, const char *w)
{
	size_t n = strlen(w);
	return p->len - p->pos >= n && memcmp(p->s + p->pos, w, n) == 0 &&
	       !is_num_char(peek_at(p, n));
}

static cJSON *parse_value(struct parser *p, int depth)
{
	if (depth > TOML_MAX_DEPTH) {
		fail(p, "nesting deeper than %d levels", TOML_MAX_DEPTH);
		return NULL;
	}
	int c = peek(p);
	if (c == '"' || c == '\'') {
		struct sbuf b = { 0 };
		cJSON *v = NULL;
		if (parse_string(p, &b, true) == 0)
			v = must(cJSON_CreateString(b.p));
		sb_free(&b);
		return v;
	}
	if (c == '[')
		return parse_array(p, depth);
	if (c == '{')
		return parse_inline_table(p, depth);
	if (match_word(p, "true")) {
		p->pos += 4;
		return must(cJSON_CreateTrue());
	}
	if (match_word(p, "false")) {
		p->pos += 5;
		return must(cJSON_CreateFalse());
	}
	if (is_date_at(p) || is_time_at(p, 0))
		return parse_datetime(p);
	if (is_digit(c) || c == '+' || c == '-' || c == 'i' || c == 'n')
		return parse_number(p);
	if (c == -1 || at_newline(p) || c == '#' || c == ',' || c == ']' || c == '}')
		fail(p, "missing value");
	else
		fail(p, "invalid value");
	return NULL;
}

/* key = value, into table (at depth) */
static int parse_keyval(struct parser *p, cJSON *table, int depth)
{
	struct key k = { 0 };
	char kb[80];
	int rc = -1;
	if (parse_key(p, &k) < 0)
		goto out;
	skip_ws(p);
	if (peek(p) != '=') {
		fail(p, "expected '=' after key '%s'", show(k.part[k.n - 1], kb, sizeof kb));
		goto out;
	}
	p->pos++;
	skip_ws(p);
	cJSON *parent = table;
	for (int i = 0; i < k.n - 1; i++) {
		struct node_ent *e = map_find(&p->map, parent, k.part[i]);
		if (!e) {
			cJSON *t = must(cJSON_CreateObject());
			add_member(parent, k.part[i], t);
			map_add(&p->map, parent, t, F_DOTTED);
			parent = t;
		} else if (cJSON_IsObject(e->child) && (e->flags & (F_DOTTED | F_IMPLICIT))) {
			/* a table only implied by a [x.y] header may be filled by
			 * dotted keys, as tomllib and toml_edit allow; from then on
			 * it counts as defined by them: no [header] for it */
			e->flags = F_DOTTED;
			parent = e->child;
		} else if (cJSON_IsObject(e->child) && (e->flags & F_INLINE)) {
			fail(p, "cannot add keys to inline table '%s'",
			     show(k.part[i], kb, sizeof kb));
			goto out;
		} else if (cJSON_IsObject(e->child)) {
			fail(p, "cannot add to table '%s' with a dotted key: it is already defined",
			     show(k.part[i], kb, sizeof kb));
			goto out;
		} else if (cJSON_IsArray(e->child)) {
			fail(p, "key '%s' is an array, not a table", show(k.part[i], kb, sizeof kb));
			goto out;
		} else {
			fail(p, "key '%s' is already defined as a value",
			     show(k.part[i], kb, sizeof kb));
			goto out;
		}
	}
	const char *last = k.part[k.n - 1];
	if (map_find(&p->map, parent, last)) {
		fail(p, "duplicate key '%s'", show(last, kb, sizeof kb));
		goto out;
	}
	cJSON *v = parse_value(p, depth + k.n);
	if (!v)
		goto out;
	add_member(parent, last, v);
	map_add(&p->map, parent, v, cJSON_IsObject(v) ? F_INLINE : 0);
	rc = 0;
out:
	key_free(&k);
	return rc;
}

/* [a.b.c] or [[a.b.c]] */
static int parse_header(struct parser *p)
{
	struct key k = { 0 };
	char kb[80];
	int rc = -1;
	bool aot = peek_at(p, 1) == '[';
	p->pos += aot ? 2 : 1;
	skip_ws(p);
	if (parse_key(p, &k) < 0)
		goto out;
	if (peek(p) != ']' || (aot && peek_at(p, 1) != ']')) {
		fail(p, aot ? "expected ']]' to close the array-of-tables header"
			    : "expected ']' to close the table header");
		goto out;
	}
	p->pos += aot ? 2 : 1;
	cJSON *parent = p->root;
	int depth = 0;
	for (int i = 0; i < k.n - 1; i++) {
		struct node_ent *e = map_find(&p->map, parent, k.part[i]);
		show(k.part[i], kb, sizeof kb);
		if (!e) {
			cJSON *t = must(cJSON_CreateObject());
			add_member(parent, k.part[i], t);
			map_add(&p->map, parent, t, F_IMPLICIT);
			parent = t;
			depth++;
		} else if (cJSON_IsObject(e->child)) {
			if (e->flags & F_INLINE) {
				fail(p, "cannot extend inline table '%s'", kb);
				goto out;
			}
			parent = e->child;
			depth++;
		} else if (cJSON_IsArray(e->child) && (e->flags & F_AOT)) {
			parent = e->last;
			depth += 2;
		} else if (cJSON_IsArray(e->child)) {
			fail(p, "cannot extend static array '%s' as a table", kb);
			goto out;
		} else {
			fail(p, "key '%s' is already defined as a value", kb);
			goto out;
		}
	}
	const char *last = k.part[k.n - 1];
	show(last, kb, sizeof kb);
	if (depth + (aot ? 2 : 1) > TOML_MAX_DEPTH) {
		fail(p, "nesting deeper than %d levels", TOML_MAX_DEPTH);
		goto out;
	}
	struct node_ent *e = map_find(&p->map, parent, last);
	if (!aot) {
		if (!e) {
			cJSON *t = must(cJSON_CreateObject());
			add_member(parent, last, t);
			map_add(&p->map, parent, t, F_DEFINED);
			p->cur = t;
		} else if (cJSON_IsObject(e->child) && e->flags == F_IMPLICIT) {
			e->flags = F_DEFINED;
			p->cur = e->child;
		} else if (cJSON_IsObject(e->child)) {
			fail(p, "table '%s' is already defined", kb);
			goto out;
		} else if (cJSON_IsArray(e->child)) {
			fail(p, "'%s' is already defined as an array", kb);
			goto out;
		} else {
			fail(p, "key '%s' is already defined as a value", kb);
			goto out;
		}
		p->cur_depth = depth + 1;
	} else {
		if (!e) {
			cJSON *arr = must(cJSON_CreateArray());
			add_member(parent, last, arr);
			e = map_add(&p->map, parent, arr, F_AOT);
		} else if (cJSON_IsArray(e->child) && !(e->flags & F_AOT)) {
			fail(p, "cannot append to static array '%s' with [[...]]", kb);
			goto out;
		} else if (cJSON_IsObject(e->child)) {
			fail(p, "'%s' is already defined as a table, not an array of tables", kb);
			goto out;
		} else if (!cJSON_IsArray(e->child)) {
			fail(p, "key '%s' is already defined as a value", kb);
			goto out;
		}
		cJSON *t = must(cJSON_CreateObject());
		cJSON_AddItemToArray(e->child, t);
		e->last = t;
		p->cur = t;
		p->cur_depth = depth + 2;
	}
	rc = end_of_line(p, "table header");
out:
	key_free(&k);
	return rc;
}

cJSON *toml_parse(const char *text, size_t len, char *err, size_t errlen)
{
	struct parser p = { .s = text, .len = len, .line = 1, .err = err, .errlen = errlen };
	if (err && errlen)
		err[0] = '\0';
	if (!text && len) {
		fail(&p, "no input");
		return NULL;
	}
	size_t bad = utf8_check((const unsigned char *)text, len);
	if (bad < len) {
		for (size_t i = 0; i < bad; i++)
			if (text[i] == '\n')
				p.line++;
		fail(&p, "invalid UTF-8");
		return NULL;
	}
	if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
		p.pos = 3; /* byte order mark */
	p.root = must(cJSON_CreateObject());
	p.cur = p.root;
	struct c_numeric loc;
	c_numeric_enter(&loc);
	for (;;) {
		skip_ws(&p);
		int c = peek(&p);
		if (c == -1)
			break;
		int rc;
		if (c == '#' || at_newline(&p))
			rc = end_of_line(&p, "comment");
		else if (c == '[')
			rc = parse_header(&p);
		else if (parse_keyval(&p, p.cur, p.cur_depth) < 0)
			rc = -1;
		else
			rc = end_of_line(&p, "value");
		if (rc < 0)
			break;
	}
	c_numeric_leave(&loc);
	free(p.map.slot);
	if (p.failed) {
		cJSON_Delete(p.root);
		return NULL;
	}
	return p.root;
}

/* ------------------------------------------------------------------ */
/* encoder */

/* an array line longer than this goes one element per line when pretty */
#define TOML_PRETTY_WIDTH 72

struct enc {
	struct sbuf out;
	int pretty;
	char *err;
	size_t errlen;
	bool failed;
};

static int enc_fail(struct enc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int enc_fail(struct enc *e, const char *fmt, ...)
{
	if (e->failed)
		return -1;
	e->failed = true;
	if (e->err && e->errlen) {
		va_list ap;
		va_start(ap, fmt);
		(void)vsnprintf(e->err, e->errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int enc_string(struct enc *e, struct sbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (utf8_check((const unsigned char *)s, n) != n)
		return enc_fail(e, "string is not valid UTF-8");
	sb_putc(b, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		switch (c) {
		case '"': sb_puts(b, "\\\""); break;
		case '\\': sb_puts(b, "\\\\"); break;
		case '\b': sb_puts(b, "\\b"); break;
		case '\t': sb_puts(b, "\\t"); break;
		case '\n': sb_puts(b, "\\n"); break;
		case '\f': sb_puts(b, "\\f"); break;
		case '\r': sb_puts(b, "\\r"); break;
		default:
			if (c < 0x20 || c == 0x7F) {
				int w = snprintf(esc, sizeof esc, "\\u%04X", c);
				if (w < 0 || (size_t)w >= sizeof esc)
					return enc_fail(e, "internal error formatting an escape");
				sb_put(b, esc, (size_t)w);
			} else {
				sb_putc(b, (char)c);
			}
		}
	}
	sb_putc(b, '"');
	return 0;
}

static int enc_key(struct enc *e, struct sbuf *b, const char *k)
{
	if (!k)
		return enc_fail(e, "object member without a key");
	bool bare = *k != '\0';
	for (const char *s = k; *s && bare; s++)
		bare = is_bare_key_char((unsigned char)*s);
	if (!bare)
		return enc_string(e, b, k);
	sb_puts(b, k);
	return 0;
}

static int enc_number(struct enc *e, double d)
{
	char buf[64];
	int w;
	if (isnan(d)) {
		sb_puts(&e->out, "nan");
		return 0;
	}
	if (isinf(d)) {
		sb_puts(&e->out, d > 0 ? "inf" : "-inf");
		return 0;
	}
	if (d == 0 && signbit(d)) {
		sb_puts(&e->out, "-0.0");
		return 0;
	}
	if (d == floor(d) && fabs(d) <= 9007199254740992.0) {
		w = snprintf(buf, sizeof buf, "%.0f", d);
	} else {
		/* the shortest %g that reads back as the same double */
		w = 0;
		for (int prec = 15; prec <= 17; prec++) {
			w = snprintf(buf, sizeof buf, "%.*g", prec, d);
			if (w > 0 && (size_t)w < sizeof buf && strtod(buf, NULL) == d)
				break;
		}
		if (w > 0 && (size_t)w < sizeof buf - 2 && !strpbrk(buf, ".e")) {
			memcpy(buf + w, ".0", 3);
			w += 2;
		}
	}
	if (w <= 0 || (size_t)w >= sizeof buf)
		return enc_fail(e, "internal error formatting a number");
	sb_put(&e->out, buf, (size_t)w);
	return 0;
}

static int cmp_keys(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* TOML cannot hold one key twice in a table */
static int check_keys(struct enc *e, const cJSON *obj)
{
	size_t n = 0;
	for (const cJSON *c = obj->child; c; c = c->next) {
		if (!c->string)
			return enc_fail(e, "object member without a key");
		n++;
	}
	if (n < 2)
		return 0;
	const char **k = xmalloc(n * sizeof *k);
	size_t i = 0;
	for (const cJSON *c = obj->child; c; c = c->next)
		k[i++] = c->string;
	qsort(k, n, sizeof *k, cmp_keys);
	int rc = 0;
	for (i = 1; i < n && rc == 0; i++) {
		if (strcmp(k[i - 1], k[i]) == 0) {
			char kb[80];
			rc = enc_fail(e, "duplicate key '%s'", show(k[i], kb, sizeof kb));
		}
	}
	free(k);
	return rc;
}

static int enc_value(struct enc *e, const cJSON *v, int depth, bool top, const char *key);

static int enc_array_items(struct enc *e, const cJSON *v, int depth, const char *key,
			   bool multiline)
{
	sb_puts(&e->out, multiline ? "[\n" : "[");
	for (const cJSON *c = v->child; c; c = c->next) {
		if (multiline)
			sb_puts(&e->out, "    ");
		if (enc_value(e, c, depth + 1, false, key) < 0)
			return -1;
		if (multiline)
			sb_puts(&e->out, ",\n");
		else if (c->next)
			sb_puts(&e->out, ", ");
	}
	sb_putc(&e->out, ']');
	return 0;
}

static int enc_array(struct enc *e, const cJSON *v, int depth, bool top, const char *key)
{
	size_t start = e->out.len;
	if (enc_array_items(e, v, depth, key, false) < 0)
		return -1;
	if (!(e->pretty && top && e->out.len - start > TOML_PRETTY_WIDTH))
		return 0;
	sb_truncate(&e->out, start);
	return enc_array_items(e, v, depth, key, true);
}

static int enc_inline_table(struct enc *e, const cJSON *v, int depth)
{
	if (check_keys(e, v) < 0)
		return -1;
	if (!v->child) {
		sb_puts(&e->out, "{}");
		return 0;
	}
	sb_puts(&e->out, "{ ");
	for (const cJSON *c = v->child; c; c = c->next) {
		if (enc_key(e, &e->out, c->string) < 0)
			return -1;
		sb_puts(&e->out, " = ");
		if (enc_value(e, c, depth + 1, false, c->string) < 0)
			return -1;
		sb_puts(&e->out, c->next ? ", " : " }");
	}
	return 0;
}

/* a value on the right of '=' or inside an array or inline table */
static int enc_value(struct enc *e, const cJSON *v, int depth, bool top, const char *key)
{
	char kb[80];
	if (depth > TOML_MAX_DEPTH)
		return enc_fail(e, "nesting deeper than %d levels", TOML_MAX_DEPTH);
	switch (v->type & 0xFF) {
	case cJSON_False:
		sb_puts(&e->out, "false");
		return 0;
	case cJSON_True:
		sb_puts(&e->out, "true");
		return 0;
	case cJSON_NULL:
		return enc_fail(e, "null has no TOML form (key '%s')",
				show(key ? key : "", kb, sizeof kb));
	case cJSON_Number:
		return enc_number(e, v->valuedouble);
	case cJSON_String:
		if (!v->valuestring)
			return enc_fail(e, "string without a value (key '%s')",
					show(key ? key : "", kb, sizeof kb));
		return enc_string(e, &e->out, v->valuestring);
	case cJSON_Array:
		return enc_array(e, v, depth, top, key);
	case cJSON_Object:
		return enc_inline_table(e, v, depth);
	default:
		return enc_fail(e, "value of key '%s' has no TOML form (raw or invalid cJSON item)",
				show(key ? key : "", kb, sizeof kb));
	}
}

/* a non-empty array of objects only: written as [[...]] sections */
static bool is_aot(const cJSON *v)
{
	if (!cJSON_IsArray(v) || !v->child)
		return false;
	for (const cJSON *c = v->child; c; c = c->next)
		if (!cJSON_IsObject(c))
			return false;
	return true;
}

static bool is_section(const cJSON *v)
{
	return cJSON_IsObject(v) || is_aot(v);
}

enum header { HDR_NONE, HDR_TABLE, HDR_AOT };

static void enc_header(struct enc *e, const struct sbuf *path, enum header h)
{
	if (e->pretty && e->out.len)
		sb_putc(&e->out, '\n');
	sb_puts(&e->out, h == HDR_AOT ? "[[" : "[");
	sb_put(&e->out, path->p, path->len);
	sb_puts(&e->out, h == HDR_AOT ? "]]\n" : "]\n");
}

/* a table at depth whose dotted name is path: header, simple keys, then
 * sub-tables and arrays of tables */
static int enc_table(struct enc *e, const cJSON *t, struct sbuf *path, int depth, enum header h)
{
	if (check_keys(e, t) < 0)
		return -1;
	bool has_simple = false, has_section = false;
	for (const cJSON *c = t->child; c; c = c->next) {
		if (is_section(c))
			has_section = true;
		else
			has_simple = true;
	}
	/* a table holding only sub-tables need not be named: [a.b] makes a */
	if (h == HDR_AOT || (h == HDR_TABLE && (has_simple || !has_section)))
		enc_header(e, path, h);
	for (const cJSON *c = t->child; c; c = c->next) {
		if (is_section(c))
			continue;
		if (enc_key(e, &e->out, c->string) < 0)
			return -1;
		sb_puts(&e->out, " = ");
		if (enc_value(e, c, depth + 1, true, c->string) < 0)
			return -1;
		sb_putc(&e->out, '\n');
	}
	for (const cJSON *c = t->child; c; c = c->next) {
		if (!is_section(c))
			continue;
		size_t mark = path->len;
		if (path->len)
			sb_putc(path, '.');
		if (enc_key(e, path, c->string) < 0)
			return -1;
		int rc = 0;
		if (cJSON_IsObject(c)) {
			if (depth + 1 > TOML_MAX_DEPTH)
				rc = enc_fail(e, "nesting deeper than %d levels", TOML_MAX_DEPTH);
			else
				rc = enc_table(e, c, path, depth + 1, HDR_TABLE);
		} else {
			for (const cJSON *el = c->child; el && rc == 0; el = el->next) {
				if (depth + 2 > TOML_MAX_DEPTH)
					rc = enc_fail(e, "nesting deeper than %d levels", TOML_MAX_DEPTH);
				else
					rc = enc_table(e, el, path, depth + 2, HDR_AOT);
			}
		}
		sb_truncate(path, mark);
		if (rc < 0)
			return -1;
	}
	return 0;
}

char *toml_encode(const cJSON *root, int pretty, char *err, size_t errlen)
{
	struct enc e = { .pretty = pretty, .err = err, .errlen = errlen };
	struct sbuf path = { 0 };
	if (err && errlen)
		err[0] = '\0';
	if (!cJSON_IsObject(root)) {
		enc_fail(&e, "root must be an object");
		return NULL;
	}
	sb_reserve(&e.out, 0);
	sb_reserve(&path, 0);
	struct c_numeric loc;
	c_numeric_enter(&loc);
	int rc = enc_table(&e, root, &path, 0, HDR_NONE);
	c_numeric_leave(&loc);
	sb_free(&path);
	if (rc < 0) {
		sb_free(&e.out);
		return NULL;
	}
	return e.out.p;
}
