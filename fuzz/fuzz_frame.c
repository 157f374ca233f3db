/* fuzz_frame: libFuzzer target for the IPC frame decoder (lib/frame.c),
 * which is also the JSON loader of every internal message: decodes frames
 * back to back; what decodes, encodes and decodes again to the same. */
#include "lib/frame.h"

#include <stdlib.h>
#include <event2/buffer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	while (off < size) {
		cJSON *doc;
		size_t used = 0;
		char err[128];
		int rc = frame_decode(data + off, size - off, &doc, &used, err, sizeof err);
		if (rc != 1)
			break;
		if (used == 0 || used > size - off)
			abort();
		struct evbuffer *b = evbuffer_new();
		if (frame_encode(b, doc) == 0) {
			cJSON *again;
			if (frame_read(b, &again, err, sizeof err) != 1 || !cJSON_Compare(doc, again, 1))
				abort();
			cJSON_Delete(again);
		}
		evbuffer_free(b);
		cJSON_Delete(doc);
		off += used;
	}
	return 0;
}
