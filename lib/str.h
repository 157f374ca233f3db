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

/* src put at o, which has room for it (the caller sized the buffer), not
 * NUL-terminated; returns the end. */
static inline char *str_put(char *o, const char *src)
{
	size_t n = strlen(src);
	memcpy(o, src, n);
	return o + n;
}

#endif
