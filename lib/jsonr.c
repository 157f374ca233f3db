/* jsonr: the strict JSON reader (see jsonr.h).  A recursive descent over
 * the bytes, building cJSON nodes as cJSON's parser links them (a list's
 * first child's prev is its last).  Entry point: jsonr_parse.
 *
 * Nodes are allocated with xmalloc and freed by cJSON_Delete with free():
 * the only cJSON hooks set in this tree are {xmalloc, free} (policyd), and
 * the default ones are malloc and free.  To spare the allocator (a frame
 * is read per policy call and per queue manager notice, and its strings
 * were most of its blocks):
 *  - a string value lives in its node's block, after the node, which is
 *    marked cJSON_IsReference so that cJSON_Delete frees the block only;
 *    cJSON_Duplicate copies such a string (and drops the mark);
 *  - a key is interned: one copy per process, never freed, shared by every
 *    node with that key and marked cJSON_StringIsConst, so that neither
 *    cJSON_Delete nor cJSON_Duplicate (which shares const keys) frees or
 *    copies it.  The table is bounded (INTERN_MAX keys of up to
 *    INTERN_KEY_MAX bytes); past it, and for a key with escapes, the key
 *    is a block of its own as cJSON's parser makes it. */
#include "lib/jsonr.h"
#include "lib/jsonw.h"
#include "lib/xalloc.h"

#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rd {
	const char *start, *p, *end;
	int depth;
	char *err;
	size_t errlen;
};

/* Every failure returns NULL through one of these, which say why once.
 * A control byte where the reader stopped is named as such. */
static void *fail_control(struct rd *r);

static void *fail(struct rd *r, const char *what)
{
	unsigned char b = r->p < r->end ? (unsigned char)*r->p : ' ';
	if (b < 0x20 && b != '\t' && b != '\n' && b != '\r')
		return fail_control(r);
	snprintf(r->err, r->errlen, "not valid JSON: %s at byte %zu", what, (size_t)(r->p - r->start));
	return NULL;
}

static void *fail_msg(struct rd *r, const char *msg)
{
	snprintf(r->err, r->errlen, "%s", msg);
	return NULL;
}

/* A byte below 0x20 where it may not be (r->p at it).  Tab, CR and LF are
 * white space between tokens, but not allowed raw in a string. */
static void *fail_control(struct rd *r)
{
	unsigned char b = (unsigned char)*r->p;
	if (b == '\t' || b == '\n' || b == '\r') {
		snprintf(r->err, r->errlen, "not valid JSON: a raw tab or line break in a string at byte %zu",
			 (size_t)(r->p - r->start));
		return NULL;
	}
	snprintf(r->err, r->errlen, "control byte 0x%02x at byte %zu", b, (size_t)(r->p - r->start));
	return NULL;
}

static void skip_ws(struct rd *r)
{
	const char *p = r->p;
	if (p < r->end && (unsigned char)*p > ' ')
		return; /* the frames we print have no white space */
	while (p < r->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	r->p = p;
}

static cJSON *node(int type)
{
	cJSON *c = xmalloc(sizeof *c);
	memset(c, 0, sizeof *c);
	c->type = type;
	return c;
}

/* A string node with room for len bytes and a NUL in its own block. */
static cJSON *string_node(size_t len)
{
	cJSON *c = xmalloc(sizeof *c + len + 1);
	memset(c, 0, sizeof *c);
	c->type = cJSON_String | cJSON_IsReference;
	c->valuestring = (char *)(c + 1);
	return c;
}

/* ---- interned keys ---- */

#define INTERN_SLOTS 4096       /* a power of two */
#define INTERN_MAX 2048         /* keys kept, at most: half the slots */
#define INTERN_KEY_MAX 64       /* bytes of the longest key kept */

static const char *intern_slot[INTERN_SLOTS]; /* atomic; never cleared */
static unsigned intern_count;                 /* atomic */

/* A key's hash, eight bytes at a time (the last eight overlapping the ones
 * before when the length is not a multiple of eight; byte by byte below
 * eight), each word mixed in by a multiplication. */
static uint32_t bytes_hash(const unsigned char *p, size_t n)
{
	const uint64_t k = 0x9e3779b97f4a7c15ull;
	uint64_t h = n * k, w;
	if (n < 8) {
		for (size_t i = 0; i < n; i++)
			h = (h ^ p[i]) * k;
	} else {
		size_t i = 0;
		for (; i + 8 <= n; i += 8) {
			memcpy(&w, p + i, 8);
			h = (h ^ w) * k;
		}
		if (i < n) {
			memcpy(&w, p + n - 8, 8);
			h = (h ^ w) * k;
		}
	}
	return (uint32_t)(h ^ h >> 32);
}

/* The one copy of the key p[0..n), which has no NUL, made on first sight;
 * NULL when it is too long or the table is full.  Lock-free: a slot, once
 * set, keeps its key, and two threads adding the same key race on the
 * slot's compare-and-swap, the loser taking the winner's copy. */
static const char *intern(const unsigned char *p, size_t n)
{
	if (n > INTERN_KEY_MAX)
		return NULL;
	char *mine = NULL;
	for (uint32_t i = bytes_hash(p, n) & (INTERN_SLOTS - 1);; i = (i + 1) & (INTERN_SLOTS - 1)) {
		const char *k = __atomic_load_n(&intern_slot[i], __ATOMIC_ACQUIRE);
		if (!k) {
			if (!mine) {
				if (__atomic_load_n(&intern_count, __ATOMIC_RELAXED) >= INTERN_MAX)
					return NULL;
				mine = xmalloc(n + 1);
				memcpy(mine, p, n);
				mine[n] = '\0';
			}
			if (__atomic_compare_exchange_n(&intern_slot[i], &k, mine, false, __ATOMIC_ACQ_REL,
							__ATOMIC_ACQUIRE)) {
				__atomic_fetch_add(&intern_count, 1, __ATOMIC_RELAXED);
				return mine;
			}
			/* another thread took the slot: k is its key */
		}
		if (strncmp(k, (const char *)p, n) == 0 && k[n] == '\0') {
			if (mine)
				free(mine);
			return k;
		}
	}
}

/* ---- strings ---- */

static bool hex4(const unsigned char *p, const unsigned char *end, uint32_t *out)
{
	if (end - p < 4)
		return false;
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		unsigned c = p[i], l = c | 0x20;
		if (c >= '0' && c <= '9')
			v = v << 4 | (c - '0');
		else if (l >= 'a' && l <= 'f')
			v = v << 4 | (l - 'a' + 10);
		else
			return false;
	}
	*out = v;
	return true;
}

static char *put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* Decodes the escapes of s[0..end), end at the closing quote, into out
 * (room for end - s bytes and a NUL: no escape decodes longer than it
 * is written).  False on a bad escape. */
static bool unescape(const unsigned char *s, const unsigned char *end, char *out)
{
	char *o = out;
	const unsigned char *p = s;
	while (p < end) {
		if (*p != '\\') {
			/* the bytes up to the next escape (the reader has
			 * refused control bytes, and a quote ends the string) */
			size_t run = json_plain_run(p, end);
			if (!run)
				run = 1; /* a byte json_plain_run stops at, but plain here */
			memcpy(o, p, run);
			o += run;
			p += run;
			continue;
		}
		p++;
		switch (*p++) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '/': *o++ = '/'; break;
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u': {
			uint32_t cp, lo;
			if (!hex4(p, end, &cp) || (cp >= 0xdc00 && cp <= 0xdfff))
				return false;
			p += 4;
			if (cp >= 0xd800 && cp <= 0xdbff) {
				/* a high surrogate: its low one must follow */
				if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &lo) ||
				    lo < 0xdc00 || lo > 0xdfff)
					return false;
				p += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			o = put_utf8(o, cp);
			break;
		}
		default:
			return false;
		}
	}
	*o = '\0';
	return true;
}

/* The string whose opening quote r->p has just passed: its bytes run to
 * *close (its closing quote), and *plain says whether they have no escape.
 * NULL (r->err set) when it has no closing quote or has a control byte. */
static const unsigned char *scan_string(struct rd *r, const unsigned char **close, bool *plain)
{
	const unsigned char *s = (const unsigned char *)r->p, *e = (const unsigned char *)r->end;
	const unsigned char *q = s + json_plain_run(s, e); /* no escapes */
	if (q < e && *q == '"') {
		*close = q;
		*plain = true;
		return s;
	}
	/* escapes: find the closing quote, a plain run at a time */
	const unsigned char *t = q;
	while (t < e && *t != '"') {
		if (*t < 0x20) {
			r->p = (const char *)t;
			return fail_control(r);
		}
		if (*t == '\\' && e - t > 1)
			t++; /* the escaped byte is never the end */
		t++;
		t += json_plain_run(t, e);
	}
	if (t >= e) {
		r->p = (const char *)(s - 1);
		return fail(r, "a string without its closing quote");
	}
	*close = t;
	*plain = false;
	return s;
}

/* Writes the string s..close (as scan_string found it) to out, which has
 * room for close - s bytes and a NUL, and moves r->p past its closing
 * quote; false (r->err set) on a bad escape. */
static bool put_string(struct rd *r, const unsigned char *s, const unsigned char *close, bool plain,
		       char *out)
{
	size_t n = (size_t)(close - s);
	if (plain) {
		memcpy(out, s, n);
		out[n] = '\0';
	} else {
		if (!unescape(s, close, out)) { /* it copies the plain runs itself */
			r->p = (const char *)(s - 1);
			fail(r, "a bad escape in the string");
			return false;
		}
	}
	r->p = (const char *)close + 1;
	return true;
}

/* A key whose opening quote r->p has just passed, and whether it is an
 * interned one (see the top of this file); r->p ends past its quote. */
static char *read_key(struct rd *r, bool *interned)
{
	const unsigned char *close;
	bool plain;
	const unsigned char *s = scan_string(r, &close, &plain);
	if (!s)
		return NULL;
	if (plain) {
		const char *k = intern(s, (size_t)(close - s));
		if (k) {
			r->p = (const char *)close + 1;
			*interned = true;
			return (char *)k;
		}
	}
	*interned = false;
	char *out = xmalloc((size_t)(close - s) + 1);
	if (!put_string(r, s, close, plain, out)) {
		free(out);
		return NULL;
	}
	return out;
}

/* A string value whose opening quote r->p has just passed, as a node. */
static cJSON *read_string_node(struct rd *r)
{
	const unsigned char *close;
	bool plain;
	const unsigned char *s = scan_string(r, &close, &plain);
	if (!s)
		return NULL;
	cJSON *c = string_node((size_t)(close - s));
	if (!put_string(r, s, close, plain, c->valuestring)) {
		free(c);
		return NULL;
	}
	return c;
}

/* ---- numbers ---- */

/* The C locale, made once: a policy may call os.setlocale, and a decimal
 * comma would misread "1.5" in every thread of the process. */
static locale_t c_numeric(void)
{
	static locale_t loc;
	locale_t l = __atomic_load_n(&loc, __ATOMIC_ACQUIRE);
	if (l)
		return l;
	locale_t made = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
	if (!made)
		abort(); /* out of memory */
	l = NULL;
	if (__atomic_compare_exchange_n(&loc, &l, made, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return made;
	freelocale(made); /* another thread made it first */
	return l;
}

static bool digit(const char *p, const char *e)
{
	return p < e && *p >= '0' && *p <= '9';
}

static cJSON *read_number(struct rd *r)
{
	const char *s = r->p, *p = s, *e = r->end;
	bool neg = *p == '-', whole = true;
	if (neg)
		p++;
	if (!digit(p, e))
		return fail(r, "a bad number");
	if (*p == '0')
		p++; /* no leading zeros */
	else
		while (digit(p, e))
			p++;
	if (p < e && *p == '.') {
		whole = false;
		if (!digit(++p, e))
			return fail(r, "a bad number");
		while (digit(p, e))
			p++;
	}
	if (p < e && (*p == 'e' || *p == 'E')) {
		whole = false;
		p++;
		if (p < e && (*p == '+' || *p == '-'))
			p++;
		if (!digit(p, e))
			return fail(r, "a bad number");
		while (digit(p, e))
			p++;
	}
	size_t len = (size_t)(p - s);
	double d;
	if (whole && len - neg <= 15) {
		/* up to 15 digits: exact in a double, no strtod */
		int64_t v = 0;
		for (const char *k = s + neg; k < p; k++)
			v = v * 10 + (*k - '0');
		d = neg ? -(double)v : (double)v;
	} else {
		char buf[64], *t = len < sizeof buf ? buf : xmalloc(len + 1);
		memcpy(t, s, len);
		t[len] = '\0';
		d = strtod_l(t, NULL, c_numeric());
		if (t != buf)
			free(t);
		if (!isfinite(d))
			return fail_msg(r, "a number is out of range");
	}
	cJSON *c = node(cJSON_Number);
	c->valuedouble = d;
	/* as cJSON: the int, saturated */
	c->valueint = d >= INT_MAX ? INT_MAX : d <= (double)INT_MIN ? INT_MIN : (int)d;
	r->p = p;
	return c;
}

/* ---- objects and arrays ---- */

/* FNV-1a of a key, to compare keys by number first. */
static uint32_t key_hash(const char *k)
{
	uint32_t h = 2166136261u;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h;
}

static int cmp_key(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Whether object j has a key twice: up to KEYS_HASHED keys by their hashes
 * first (a string comparison only when two match), above that sorted.
 * When every key is interned, two are the same key only if they are the
 * same pointer, and no key is hashed. */
#define KEYS_HASHED 64
static bool dup_key(const cJSON *j)
{
	uint32_t h[KEYS_HASHED];
	size_t n = 0;
	const cJSON *c = j->child;
	for (; c && n < KEYS_HASHED && (c->type & cJSON_StringIsConst); c = c->next)
		n++;
	if (!c) {
		for (const cJSON *a = j->child; a; a = a->next)
			for (const cJSON *b = a->next; b; b = b->next)
				if (a->string == b->string)
					return true;
		return false;
	}
	n = 0;
	c = j->child;
	for (; c && n < KEYS_HASHED; c = c->next)
		h[n++] = key_hash(c->string);
	if (!c) {
		c = j->child;
		for (size_t i = 0; i < n; i++, c = c->next) {
			const cJSON *d = c->next;
			for (size_t k = i + 1; k < n; k++, d = d->next)
				if (h[k] == h[i] && strcmp(c->string, d->string) == 0)
					return true;
		}
		return false;
	}
	for (; c; c = c->next)
		n++;
	const char **keys = xmalloc(n * sizeof *keys);
	n = 0;
	for (c = j->child; c; c = c->next)
		keys[n++] = c->string;
	qsort(keys, n, sizeof *keys, cmp_key);
	bool twice = false;
	for (size_t i = 1; i < n && !twice; i++)
		twice = strcmp(keys[i - 1], keys[i]) == 0;
	free(keys);
	return twice;
}

static cJSON *read_value(struct rd *r);

/* The object or array whose opening bracket r->p has just passed. */
static cJSON *read_container(struct rd *r, bool obj)
{
	if (++r->depth > CJSON_NESTING_LIMIT)
		return fail(r, "nesting too deep");
	cJSON *c = node(obj ? cJSON_Object : cJSON_Array), *last = NULL;
	const char close = obj ? '}' : ']';
	skip_ws(r);
	if (r->p < r->end && *r->p == close) {
		r->p++;
		r->depth--;
		return c;
	}
	for (;;) {
		char *key = NULL;
		bool interned = false;
		if (obj) {
			if (r->p == r->end || *r->p != '"') {
				fail(r, "not a key");
				goto bad;
			}
			r->p++;
			if (!(key = read_key(r, &interned)))
				goto bad;
			skip_ws(r);
			if (r->p == r->end || *r->p != ':') {
				if (!interned)
					free(key);
				fail(r, "no ':' after a key");
				goto bad;
			}
			r->p++;
			skip_ws(r);
		}
		cJSON *v = read_value(r);
		if (!v) {
			if (!interned)
				free(key);
			goto bad;
		}
		v->string = key;
		if (interned)
			v->type |= cJSON_StringIsConst;
		if (last) {
			last->next = v;
			v->prev = last;
		} else {
			c->child = v;
		}
		last = v;
		skip_ws(r);
		if (r->p < r->end && *r->p == ',') {
			r->p++;
			skip_ws(r);
			continue;
		}
		if (r->p < r->end && *r->p == close) {
			r->p++;
			break;
		}
		fail(r, obj ? "no ',' or '}' after a member" : "no ',' or ']' after an element");
		goto bad;
	}
	c->child->prev = last;
	r->depth--;
	if (obj && c->child->next && dup_key(c)) {
		cJSON_Delete(c);
		return fail_msg(r, "a key appears twice in one object");
	}
	return c;
bad:
	cJSON_Delete(c);
	return NULL;
}

static cJSON *literal(struct rd *r, const char *word, size_t n, int type)
{
	if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
		return fail(r, "an unknown word");
	r->p += n;
	cJSON *c = node(type);
	c->valueint = type == cJSON_True; /* as cJSON */
	return c;
}

static cJSON *read_value(struct rd *r)
{
	if (r->p == r->end)
		return fail(r, "no value");
	switch (*r->p) {
	case '{':
		r->p++;
		return read_container(r, true);
	case '[':
		r->p++;
		return read_container(r, false);
	case '"':
		r->p++;
		return read_string_node(r);
	case 't': return literal(r, "true", 4, cJSON_True);
	case 'f': return literal(r, "false", 5, cJSON_False);
	case 'n': return literal(r, "null", 4, cJSON_NULL);
	default:
		if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
			return read_number(r);
		return fail(r, "not a value");
	}
}

cJSON *jsonr_parse_any(const char *p, size_t n)
{
	char err[160];
	cJSON *doc = jsonr_parse(p, n, err, sizeof err);
	return doc ? doc : cJSON_ParseWithLength(p, n);
}

cJSON *jsonr_parse(const char *p, size_t n, char *err, size_t errlen)
{
	struct rd r = { .start = p, .p = p, .end = p + n, .err = err, .errlen = errlen };
	skip_ws(&r);
	cJSON *doc = read_value(&r);
	if (!doc)
		return NULL;
	skip_ws(&r);
	if (r.p != r.end) {
		cJSON_Delete(doc);
		return fail(&r, "bytes after the document");
	}
	return doc;
}
