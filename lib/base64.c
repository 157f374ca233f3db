/* base64: RFC 4648 section 4 (standard alphabet, '=' padding).
 * Entry points: base64_encode, base64_decode.
 * Decoding is strict and returns NULL for anything but the canonical form:
 * a length that is not a multiple of 4, a byte outside the alphabet
 * (whitespace included), '=' anywhere but the last one or two places, or
 * non-zero bits left over in the last character ("QR==" for "QQ=="). */
#include "lib/base64.h"
#include "lib/xalloc.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

static const char alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const void *data, size_t len)
{
	const unsigned char *in = data;
	size_t out_len = (len + 2) / 3 * 4;
	char *out = xmalloc(out_len + 1);
	size_t o = 0, i = 0;
	for (; len - i >= 3; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = alphabet[v >> 18];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = alphabet[(v >> 6) & 63];
		out[o++] = alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		out[o++] = alphabet[v >> 18];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = '=';
		out[o++] = '=';
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = alphabet[v >> 18];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = alphabet[(v >> 6) & 63];
		out[o++] = '=';
	}
	out[o] = '\0';
	return out;
}

/* 0..63, or -1 for a byte outside the alphabet (including '=') */
static int value_of(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

unsigned char *base64_decode(const char *s, size_t len, size_t *outlen)
{
	if (!s || len % 4 != 0)
		return NULL;
	size_t pad = 0;
	if (len > 0 && s[len - 1] == '=')
		pad = s[len - 2] == '=' ? 2 : 1;
	unsigned char *out = xmalloc(len / 4 * 3 + 1);
	size_t o = 0;
	for (size_t i = 0; i < len; i += 4) {
		bool last = i + 4 == len;
		size_t have = last ? 4 - pad : 4; /* significant characters */
		uint32_t v = 0;
		for (size_t k = 0; k < 4; k++) {
			int d = 0;
			if (k < have) {
				d = value_of((unsigned char)s[i + k]);
				if (d < 0)
					goto bad;
			}
			v = v << 6 | (uint32_t)d;
		}
		out[o++] = (unsigned char)(v >> 16);
		if (have == 4) {
			out[o++] = (unsigned char)(v >> 8);
			out[o++] = (unsigned char)v;
		} else if (have == 3) {
			if (v & 0xFF)
				goto bad;
			out[o++] = (unsigned char)(v >> 8);
		} else if (v & 0xFFFF) {
			goto bad;
		}
	}
	out[o] = '\0';
	*outlen = o;
	return out;
bad:
	free(out);
	return NULL;
}
