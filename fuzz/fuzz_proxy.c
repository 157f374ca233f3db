/* fuzz_proxy: libFuzzer target for the PROXY protocol parser
 * (smtpd_proxy.c): never reads past the input, a header's length is within
 * it, and a header that parses parses the same with trailing bytes. */
#include "smtpd/smtpd.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_result r;
	size_t used;
	int rc = proxy_parse(data, size, &r, &used);
	if (rc == 1) {
		if (used == 0 || used > size)
			abort();
		uint8_t *more = malloc(used + 8);
		memcpy(more, data, used);
		memcpy(more + used, "EHLO x\r\n", 8);
		struct proxy_result r2;
		size_t used2;
		if (proxy_parse(more, used + 8, &r2, &used2) != 1 || used2 != used)
			abort();
		free(more);
	}
	return 0;
}
