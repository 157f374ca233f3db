/* fuzz_addr: libFuzzer target for the address parser (lib/addr.c): paths
 * with every flag combination, and bare emails.  What parses re-parses. */
#include "lib/addr.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[128];
	for (int flags = 0; flags < 8; flags++) {
		struct smtp_addr a;
		size_t used;
		if (addr_parse_path((const char *)data, size, flags, &a, &used, err, sizeof err) == 0) {
			if (used > size)
				abort();
			struct smtp_addr b;
			if (addr_parse_email(a.email, &b, err, sizeof err) != 0)
				abort();
			addr_free(&b);
			addr_free(&a);
		}
	}
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	struct smtp_addr c;
	if (addr_parse_email(s, &c, err, sizeof err) == 0)
		addr_free(&c);
	free(s);
	return 0;
}
