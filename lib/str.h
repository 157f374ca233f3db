/* str: string copies without printf.  snprintf(dst, cap, "%s", src) costs
 * some five hundred instructions (it parses its format and goes through a
 * FILE), and a message passes several such copies on its way through
 * kumo-smtpd and kumo-qmgr. */
#ifndef KUMO_STR_H
#define KUMO_STR_H
#include <stddef.h>
#include <string.h>

/* src copied to dst as snprintf(dst, cap, "%s", src) copies it: cut to
 * cap - 1 bytes and NUL-terminated (nothing written when cap is 0).
 * Returns strlen(src), as snprintf does. */
static inline size_t str_copy(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (cap) {
		size_t m = n < cap ? n : cap - 1;
		memcpy(dst, src, m);
		dst[m] = '\0';
	}
	return n;
}

/* a, b and c put together at dst as snprintf(dst, cap, "%s%s%s", a, b, c)
 * puts them: cut to cap - 1 bytes and NUL-terminated (nothing written when
 * cap is 0).  Returns the length of the whole, as snprintf does. */
static inline size_t str_join3(char *dst, size_t cap, const char *a, const char *b, const char *c)
{
	const char *part[3] = { a, b, c };
	size_t len = 0;
	for (int i = 0; i < 3; i++) {
		size_t n = strlen(part[i]);
		if (len + 1 < cap) {
			size_t room = cap - 1 - len;
			memcpy(dst + len, part[i], n < room ? n : room);
		}
		len += n;
	}
	if (cap)
		dst[len < cap ? len : cap - 1] = '\0';
	return len;
}

/* src put at o, which has room for it (the caller sized the buffer), not
 * NUL-terminated; returns the end. */
static inline char *str_put(char *o, const char *src)
{
	size_t n = strlen(src);
	memcpy(o, src, n);
	return o + n;
}

#endif
