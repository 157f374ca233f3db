/* jsonw: cJSON documents printed as cJSON_PrintUnformatted prints them
 * (see jsonw.h).  Entry points: jbuf_value, json_print.  It cannot fail
 * (allocation failure aborts, as everywhere here). */
#include "lib/jsonw.h"
#include "lib/xalloc.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void need(struct jbuf *b, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = xrealloc(b->p, b->cap);
	}
}

void jbuf_add(struct jbuf *b, const void *s, size_t n)
{
	need(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

/* One byte: the punctuation of arrays and objects, without a memcpy. */
static void jbuf_ch(struct jbuf *b, char c)
{
	need(b, 1);
	b->p[b->len++] = c;
}

char *jbuf_cstr(struct jbuf *b)
{
	need(b, 1);
	b->p[b->len] = '\0';
	return b->p;
}

void jbuf_free(struct jbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* cJSON escapes '"', '\\' and every byte below 0x20 (the named ones by
 * name), and nothing else: not '/', not bytes of 0x7f and above. */

/* The escaped form of s[0..n) at o (room for 6 bytes per byte); returns
 * its end. */
static char *escape(char *o, const unsigned char *p, const unsigned char *end)
{
	static const char hex[] = "0123456789abcdef";
	while (p < end) {
		/* the run that needs no escape, copied at once */
		const unsigned char *q = p + json_plain_run(p, end);
		memcpy(o, p, (size_t)(q - p));
		o += q - p;
		if (q == end)
			break;
		unsigned char c = *q;
		p = q + 1;
		*o++ = '\\';
		switch (c) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '\b': *o++ = 'b'; break;
		case '\f': *o++ = 'f'; break;
		case '\n': *o++ = 'n'; break;
		case '\r': *o++ = 'r'; break;
		case '\t': *o++ = 't'; break;
		default:
			memcpy(o, "u00", 3);
			o[3] = hex[c >> 4];
			o[4] = hex[c & 15];
			o += 5;
		}
	}
	return o;
}

#ifdef __SSE2__
/* How many of the n bytes at o need no escape, reading them 16 at a time,
 * up to 15 bytes past them: the caller's buffer has room there, and flags
 * from those bytes are masked off before they are tested. */
static size_t plain_prefix(const char *o, size_t n)
{
	for (size_t k = 0; k < n; k += 16) {
		unsigned bits = json_16_special(o + k);
		if (n - k < 16)
			bits &= (1u << (n - k)) - 1;
		if (bits)
			return k + (size_t)__builtin_ctz(bits);
	}
	return n;
}
#endif

void jbuf_str(struct jbuf *b, const char *s)
{
	size_t n = strlen(s);
#ifdef __SSE2__
	/* Most strings need no escape: copied whole first, then checked in
	 * the copy, whose buffer can be read past its end (a string's own
	 * bytes cannot: its last 16 would take a loop of single bytes).  Room
	 * for six bytes per byte is made only once an escape is found. */
	need(b, n + 2 + 16);
	char *o = b->p + b->len;
	*o++ = '"';
	memcpy(o, s, n);
	size_t plain = plain_prefix(o, n);
	if (plain < n) {
		b->len = (size_t)(o + plain - b->p);
		need(b, (n - plain) * 6 + 1);
		o = escape(b->p + b->len, (const unsigned char *)s + plain, (const unsigned char *)s + n);
	} else {
		o += n;
	}
#else
	need(b, n * 6 + 2);
	char *o = b->p + b->len;
	*o++ = '"';
	o = escape(o, (const unsigned char *)s, (const unsigned char *)s + n);
#endif
	*o++ = '"';
	b->len = (size_t)(o - b->p);
}

void jbuf_num(struct jbuf *b, double d)
{
	char tmp[64];
	int n;
	if (isnan(d) || isinf(d)) {
		n = snprintf(tmp, sizeof tmp, "null");
	} else if (d == floor(d) && fabs(d) < 9007199254740992.0) {
		/* whole numbers: no floating-point printf */
		long long v = (long long)d;
		unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
		char *e = tmp + sizeof tmp, *p = e;
		do
			*--p = (char)('0' + u % 10);
		while (u /= 10);
		if (v < 0)
			*--p = '-';
		jbuf_add(b, p, (size_t)(e - p));
		return;
	} else {
		/* as cJSON does: 15 digits if they read back the same, else 17 */
		n = snprintf(tmp, sizeof tmp, "%1.15g", d);
		if (strtod(tmp, NULL) != d)
			n = snprintf(tmp, sizeof tmp, "%1.17g", d);
	}
	jbuf_add(b, tmp, (size_t)n);
}

void jbuf_value(struct jbuf *b, const cJSON *v)
{
	switch (v->type & 0xff) {
	case cJSON_NULL: jbuf_add(b, "null", 4); break;
	case cJSON_False: jbuf_add(b, "false", 5); break;
	case cJSON_True: jbuf_add(b, "true", 4); break;
	case cJSON_Number: jbuf_num(b, v->valuedouble); break;
	case cJSON_String: jbuf_str(b, v->valuestring ? v->valuestring : ""); break;
	case cJSON_Raw:
		if (v->valuestring)
			jbuf_add(b, v->valuestring, strlen(v->valuestring));
		break;
	case cJSON_Array:
	case cJSON_Object: {
		bool obj = cJSON_IsObject(v);
		jbuf_ch(b, obj ? '{' : '[');
		for (const cJSON *c = v->child; c; c = c->next) {
			if (c != v->child)
				jbuf_ch(b, ',');
			if (obj) {
				jbuf_str(b, c->string ? c->string : "");
				jbuf_ch(b, ':');
			}
			jbuf_value(b, c);
		}
		jbuf_ch(b, obj ? '}' : ']');
		break;
	}
	default: jbuf_add(b, "null", 4); break;
	}
}

char *json_print(const cJSON *v, size_t *len)
{
	struct jbuf b = { 0 };
	jbuf_value(&b, v);
	if (len)
		*len = b.len;
	return jbuf_cstr(&b);
}
