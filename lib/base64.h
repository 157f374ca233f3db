/* Standard base64 (RFC 4648 alphabet, '=' padding). */
#ifndef KUMO_BASE64_H
#define KUMO_BASE64_H
#include <stddef.h>

/* Encodes len bytes; returns a NUL-terminated string the caller frees. */
char *base64_encode(const void *data, size_t len);
/* Decodes; returns a buffer (NUL-terminated for convenience, *outlen bytes)
 * or NULL on invalid input (bad chars, bad padding, bad length). */
unsigned char *base64_decode(const char *s, size_t len, size_t *outlen);

#endif
