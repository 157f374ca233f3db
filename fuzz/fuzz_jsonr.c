/* fuzz_jsonr: libFuzzer target for the strict JSON reader (lib/jsonr.c),
 * against cJSON's parser: whatever jsonr takes, cJSON takes too (the input
 * NUL-terminated) and reads to an equal tree; and that tree, printed by
 * jbuf_value, reads back through jsonr to the same. */
#include "lib/jsonr.h"
#include "lib/jsonw.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[160];
	cJSON *doc = jsonr_parse((const char *)data, size, err, sizeof err);
	if (!doc)
		return 0;
	/* jsonr refuses every control byte outside white space, NUL included,
	 * so the input is one C string for cJSON */
	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	const char *end = NULL;
	cJSON *theirs = cJSON_ParseWithOpts(text, &end, 1);
	if (!theirs || !cJSON_Compare(doc, theirs, 1))
		abort();
	size_t len;
	char *printed = json_print(doc, &len);
	cJSON *again = jsonr_parse(printed, len, err, sizeof err);
	if (!again || !cJSON_Compare(doc, again, 1))
		abort();
	cJSON_Delete(again);
	free(printed);
	cJSON_Delete(theirs);
	cJSON_Delete(doc);
	free(text);
	return 0;
}
