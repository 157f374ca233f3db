/* fuzz_toml: libFuzzer target for lib/toml.c.  Entry point:
 * LLVMFuzzerTestOneInput.  It parses the input; when that succeeds it encodes
 * the tree (compact and pretty), parses each encoding again and aborts if
 * the encoder refuses a parsed tree, if its output does not parse, or if
 * the tree read back differs (exactly: NaN equals NaN, -0.0 is not 0).
 * Build and run:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -I. fuzz/fuzz_toml.c lib/toml.c lib/xalloc.c -lcjson -lm -o fuzz_toml
 *   ./fuzz_toml -max_total_time=60 corpus/ */
#include "lib/toml.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const cJSON *a, const cJSON *b)
{
	if ((a->type & 0xFF) != (b->type & 0xFF))
		return false;
	switch (a->type & 0xFF) {
	case cJSON_Number:
		if (isnan(a->valuedouble) || isnan(b->valuedouble))
			return isnan(a->valuedouble) && isnan(b->valuedouble);
		return a->valuedouble == b->valuedouble &&
		       signbit(a->valuedouble) == signbit(b->valuedouble);
	case cJSON_String:
		return strcmp(a->valuestring, b->valuestring) == 0;
	case cJSON_Array: {
		const cJSON *x = a->child, *y = b->child;
		for (; x && y; x = x->next, y = y->next)
			if (!same(x, y))
				return false;
		return !x && !y;
	}
	case cJSON_Object: {
		/* the parser rejects duplicate keys, so a lookup is enough */
		size_t na = 0, nb = 0;
		const cJSON *next = b->child;
		for (const cJSON *x = a->child; x; x = x->next) {
			const cJSON *y = next;
			if (!y || strcmp(y->string, x->string) != 0)
				y = cJSON_GetObjectItemCaseSensitive(b, x->string);
			if (!y || !same(x, y))
				return false;
			next = y->next;
			na++;
		}
		for (const cJSON *y = b->child; y; y = y->next)
			nb++;
		return na == nb;
	}
	default:
		return true;
	}
}

static void die(const char *what, const char *err, const char *toml)
{
	fprintf(stderr, "fuzz_toml: %s: %s\n--- encoded ---\n%s\n", what, err, toml ? toml : "");
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	cJSON *tree = toml_parse((const char *)data, size, err, sizeof err);
	if (!tree)
		return 0;
	for (int pretty = 0; pretty <= 1; pretty++) {
		char *toml = toml_encode(tree, pretty, err, sizeof err);
		if (!toml)
			die("cannot encode a parsed tree", err, NULL);
		cJSON *back = toml_parse(toml, strlen(toml), err, sizeof err);
		if (!back)
			die("encoded text does not parse", err, toml);
		if (!same(tree, back))
			die("round trip differs", "", toml);
		cJSON_Delete(back);
		free(toml);
	}
	cJSON_Delete(tree);
	return 0;
}
