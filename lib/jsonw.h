/* jsonw: cJSON documents printed as cJSON_PrintUnformatted prints them (the
 * same text; whole numbers up to 2^53 exactly, where cJSON's 15 digits
 * would round), without the floating-point printf and sscanf cJSON runs
 * for every number, into a growable buffer.  Used for log records and IPC
 * frames, which are printed once per message or more. */
#ifndef KUMO_JSONW_H
#define KUMO_JSONW_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cjson/cJSON.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

struct jbuf {
	char *p;      /* owned; not NUL-terminated unless jbuf_cstr */
	size_t len, cap;
};

void jbuf_add(struct jbuf *b, const void *s, size_t n);
/* jbuf_add for a few bytes whose count the compiler knows (a literal's):
 * inline, a copy of fixed size when there is room. */
static inline void jbuf_lit(struct jbuf *b, const char *s, size_t n)
{
	if (b->cap - b->len >= n) {
		memcpy(b->p + b->len, s, n);
		b->len += n;
	} else {
		jbuf_add(b, s, n);
	}
}
/* A JSON string (s escaped as cJSON escapes), a whole number. */
void jbuf_str(struct jbuf *b, const char *s);
void jbuf_num(struct jbuf *b, double d);
/* Appends v's text. */
void jbuf_value(struct jbuf *b, const cJSON *v);
/* NUL-terminates and returns b->p (still owned by b). */
char *jbuf_cstr(struct jbuf *b);
void jbuf_free(struct jbuf *b);

/* v's text as a new string (caller frees), like cJSON_PrintUnformatted;
 * *len (may be NULL) gets its length. */
char *json_print(const cJSON *v, size_t *len);

/* Where in the eight bytes of x (read little-endian) a run of plain string
 * bytes ends: at a byte below 0x20, '"' or '\\' (the bytes a writer
 * escapes, and a reader must look at).  0 if at none; else the lowest set
 * bit is the high bit of the first such byte (the bits above it may be
 * false).  (v - 0x01..01) & ~v & 0x80..80 flags the bytes of v that are
 * zero; with 0x20..20 instead of 0x01..01, those below 0x20.  A borrow
 * runs only upwards, from a flagged byte, so the first flag is exact. */
static inline uint64_t json_word_special(uint64_t x)
{
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
	return (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & highs;
}

#ifdef __SSE2__
/* The same for the sixteen bytes at p: bit i set when byte i is special.
 * A byte is below 0x20 when the unsigned minimum of it and 0x1f is itself. */
static inline unsigned json_16_special(const void *p)
{
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
	__m128i x = _mm_loadu_si128((const __m128i *)p);
	__m128i m = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x),
				 _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)));
	return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* The length of the run of plain string bytes at p, at most end - p:
 * sixteen bytes at a time where SSE2 is (every x86-64), then eight, then
 * one. */
static inline size_t json_plain_run(const unsigned char *p, const unsigned char *end)
{
	const unsigned char *q = p;
#ifdef __SSE2__
	for (unsigned bits; end - q >= 16; q += 16)
		if ((bits = json_16_special(q)) != 0)
			return (size_t)(q - p) + (size_t)__builtin_ctz(bits);
#endif
	for (uint64_t x, m; end - q >= 8; q += 8) {
		memcpy(&x, q, 8);
		if ((m = json_word_special(x)) != 0)
			return (size_t)(q - p) + (size_t)(__builtin_ctzll(m) >> 3);
	}
	while (q < end && *q >= 0x20 && *q != '"' && *q != '\\')
		q++;
	return (size_t)(q - p);
}

#endif
