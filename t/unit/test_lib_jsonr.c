/* Check suite for lib/jsonr.c:
 *  - valid documents: jsonr_parse gives the tree cJSON_Parse gives (types,
 *    keys, strings, numbers and valueint, list links), for a table and for
 *    random documents printed by jbuf_value;
 *  - what it decodes: escapes, surrogate pairs, numbers at the edges;
 *  - what it refuses, and the reason it gives, for a table of bad texts;
 *  - depth: CJSON_NESTING_LIMIT levels pass, one more does not;
 *  - an object with a key twice, below and above the hashed key count;
 *  - blocks: string values in their node's block (cJSON_IsReference),
 *    keys interned (cJSON_StringIsConst, one copy shared by every parse),
 *    and trees that stay whole through cJSON_Duplicate, detaching,
 *    re-keying and deleting the original (under ASan in `make check`);
 *  - keys the table does not keep: long ones, escaped ones, and those past
 *    its bound, each a block of its own;
 *  - jsonr_parse_any: cJSON's reading where jsonr refuses. */
#include "lib/jsonr.h"
#include "lib/jsonw.h"

#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Same tree, down to what cJSON's parser leaves in the fields our code
 * reads: type, key, string, number and its int, and the list links (the
 * first child's prev is the last, each other's the one before). */
static void same_tree(const cJSON *a, const cJSON *b, const char *text)
{
	ck_assert_msg((a->type & 0xFF) == (b->type & 0xFF), "%s: type %d, cJSON %d", text, a->type, b->type);
	ck_assert_msg((a->string == NULL) == (b->string == NULL), "%s: key presence", text);
	if (a->string)
		ck_assert_str_eq(a->string, b->string);
	ck_assert_msg((a->valuestring == NULL) == (b->valuestring == NULL), "%s: string presence", text);
	if (a->valuestring)
		ck_assert_str_eq(a->valuestring, b->valuestring);
	if (cJSON_IsNumber(a)) {
		ck_assert_msg(a->valuedouble == b->valuedouble ||
			      fabs(a->valuedouble - b->valuedouble) <= 1e-15 * fabs(b->valuedouble),
			      "%s: %.17g, cJSON %.17g", text, a->valuedouble, b->valuedouble);
	}
	ck_assert_msg(a->valueint == b->valueint, "%s: valueint %d, cJSON %d", text, a->valueint, b->valueint);
	const cJSON *x = a->child, *y = b->child, *lastx = NULL;
	for (; x && y; lastx = x, x = x->next, y = y->next) {
		if (x != a->child)
			ck_assert_msg(x->prev == lastx, "%s: prev link", text);
		same_tree(x, y, text);
	}
	ck_assert_msg(!x && !y, "%s: child count", text);
	if (a->child)
		ck_assert_msg(a->child->prev == lastx, "%s: first child's prev is not the last", text);
}

static cJSON *parse(const char *text, char *err, size_t errlen)
{
	err[0] = '\0';
	return jsonr_parse(text, strlen(text), err, errlen);
}

static const char *const good[] = {
	"{}", "[]", "null", "true", "false", "\"\"", "0", "-0", "7", "-12",
	" \t\r\n{ \"a\" : [ 1 , 2 ] }\n",
	"[1,-2,3.25,1e300,-2.5e-7,0.1,123456789012345,1234567890123456789,1E+2,1e-2]",
	"[2147483647,2147483648,-2147483648,-2147483649,1e10,-1e10,2.9,-2.9]",
	"{\"a\":{\"b\":{\"c\":[{},[],null,false,true]}}}",
	"\"escapes \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0001 \\u001f end\"",
	"\"\\u00e9t\\u00E9 \\u20ac \\ud83d\\ude00 \\uD834\\uDD1E\"",
	"{\"\":\"empty key\",\"k\\n\":\"newline in a key\",\"\\u0041\":1}",
	"{\"id\":\"0123456789abcdef0123456789abcdef\",\"meta\":{\"received_from\":\"127.0.0.1:2525\","
	"\"port\":2525,\"ratio\":0.3333333333333333},\"recipient\":[\"a@b.example\",\"c@d.example\"]}",
	"\"UTF-8 as it is: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
	"[\"a long string without escapes, longer than a few words of eight bytes\",\"x\\\"y\"]",
	"{\"a\":1,\"b\":{\"a\":1},\"c\":[{\"a\":1},{\"a\":2}]}",
};

START_TEST(test_same_as_cjson)
{
	const char *text = good[_i];
	char err[160];
	cJSON *got = parse(text, err, sizeof err);
	ck_assert_msg(got != NULL, "%s: %s", text, err);
	cJSON *want = cJSON_Parse(text);
	ck_assert_msg(want != NULL, "table: cJSON refuses %s", text);
	same_tree(got, want, text);
	cJSON_Delete(got);
	cJSON_Delete(want);
}
END_TEST

/* Random documents (nested objects and arrays, strings with every kind of
 * byte, numbers of every shape), printed by jbuf_value, read by both. */
static unsigned rnd_state = 12345;
static unsigned rnd(unsigned n)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return (rnd_state >> 8) % n;
}

static char *rnd_string(void)
{
	size_t n = rnd(40);
	char *s = malloc(n + 1);
	for (size_t i = 0; i < n; i++) {
		unsigned k = rnd(10), b;
		if (k < 6)
			b = 'a' + rnd(26);
		else if (k == 6)
			b = (unsigned char)"\"\\/\b\f\n\r\t"[rnd(8)];
		else if (k == 7)
			b = 1 + rnd(31);
		else if (k == 8)
			b = 0x80 + rnd(128);
		else
			b = ' ' + rnd(95);
		s[i] = (char)b;
	}
	s[n] = '\0';
	return s;
}

static cJSON *rnd_value(int depth)
{
	switch (rnd(depth > 4 ? 5 : 7)) {
	case 0: return cJSON_CreateNull();
	case 1: return cJSON_CreateBool(rnd(2));
	case 2: {
		static const double nums[] = { 0, -1, 1e15, 123456789012345678.0, 0.1, -2.5e-300, 1e308,
					       2147483648.0, -3e9, 42 };
		return cJSON_CreateNumber(rnd(2) ? nums[rnd(10)] : (double)(int)rnd(100000) - 50000);
	}
	case 3:
	case 4: {
		char *s = rnd_string();
		cJSON *c = cJSON_CreateString(s);
		free(s);
		return c;
	}
	case 5: {
		cJSON *a = cJSON_CreateArray();
		for (unsigned i = rnd(6); i; i--)
			cJSON_AddItemToArray(a, rnd_value(depth + 1));
		return a;
	}
	default: {
		cJSON *o = cJSON_CreateObject();
		for (unsigned i = rnd(6); i; i--) {
			char key[16];
			snprintf(key, sizeof key, "k%u", i); /* distinct */
			cJSON_AddItemToObject(o, key, rnd_value(depth + 1));
		}
		return o;
	}
	}
}

START_TEST(test_random_documents)
{
	for (int round = 0; round < 2000; round++) {
		cJSON *doc = rnd_value(0);
		size_t len;
		char *text = json_print(doc, &len);
		char err[160];
		cJSON *got = jsonr_parse(text, len, err, sizeof err);
		ck_assert_msg(got != NULL, "round %d: %s: %s", round, err, text);
		cJSON *want = cJSON_ParseWithLength(text, len);
		ck_assert(want != NULL);
		same_tree(got, want, text);
		ck_assert(cJSON_Compare(got, doc, 1));
		cJSON_Delete(got);
		cJSON_Delete(want);
		cJSON_Delete(doc);
		free(text);
	}
}
END_TEST

START_TEST(test_decoded)
{
	char err[160];
	cJSON *j = parse("[\"\\u00e9\\u20ac\\ud83d\\ude00\",\"a\\u0000b\",-0,123456789012345,"
			 "1e10,-1e10,2.75,true,false,null]", err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	ck_assert_str_eq(cJSON_GetArrayItem(j, 0)->valuestring,
			 "\xc3\xa9" "\xe2\x82\xac" "\xf0\x9f\x98\x80");
	ck_assert_str_eq(cJSON_GetArrayItem(j, 1)->valuestring, "a"); /* NUL ends it, as in cJSON */
	ck_assert(signbit(cJSON_GetArrayItem(j, 2)->valuedouble));
	ck_assert(cJSON_GetArrayItem(j, 3)->valuedouble == 123456789012345.0);
	ck_assert_int_eq(cJSON_GetArrayItem(j, 4)->valueint, INT_MAX);
	ck_assert_int_eq(cJSON_GetArrayItem(j, 5)->valueint, INT_MIN);
	ck_assert(cJSON_GetArrayItem(j, 6)->valuedouble == 2.75);
	ck_assert_int_eq(cJSON_GetArrayItem(j, 6)->valueint, 2);
	ck_assert_int_eq(cJSON_GetArrayItem(j, 7)->valueint, 1);
	ck_assert(cJSON_IsFalse(cJSON_GetArrayItem(j, 8)));
	ck_assert(cJSON_IsNull(cJSON_GetArrayItem(j, 9)));
	cJSON_Delete(j);
}
END_TEST

struct bad_case {
	const char *text;
	const char *why;  /* substring of the reason */
};

static const struct bad_case bad[] = {
	{ "", "no value at byte 0" },
	{ "   ", "no value at byte 3" },
	{ "abc", "not a value at byte 0" },
	{ "+1", "not a value" },
	{ "01", "bytes after the document at byte 1" },
	{ "1.", "bad number" },
	{ ".5", "not a value" },
	{ "1e", "bad number" },
	{ "1e+", "bad number" },
	{ "-", "bad number" },
	{ "-a", "bad number" },
	{ "1e999", "a number is out of range" },
	{ "[-1e999]", "a number is out of range" },
	{ "[1,]", "not a value at byte 3" },
	{ "[1 2]", "no ',' or ']'" },
	{ "[1", "no ',' or ']'" },
	{ "{\"a\":1,}", "not a key at byte 7" },
	{ "{\"a\" 1}", "no ':'" },
	{ "{a:1}", "not a key" },
	{ "{\"a\":1", "no ',' or '}'" },
	{ "{\"a\"", "no ':'" },
	{ "tru", "unknown word" },
	{ "nul", "unknown word" },
	{ "falsey", "bytes after the document" },
	{ "{} {}", "bytes after the document at byte 3" },
	{ "\"abc", "without its closing quote" },
	{ "\"abc\\", "without its closing quote" },
	{ "\"abc\\\"", "without its closing quote" },
	{ "\"\\x\"", "bad escape" },
	{ "\"\\u12\"", "bad escape" },
	{ "\"\\u12g4\"", "bad escape" },
	{ "\"\\ud800\"", "bad escape" },
	{ "\"\\udc00\"", "bad escape" },
	{ "\"\\ud800\\u0041\"", "bad escape" },
	{ "\"\\ud800x\"", "bad escape" },
	{ "\"a\tb\"", "raw tab or line break" },
	{ "\"a\nb\"", "raw tab or line break" },
	{ "\"a\x01" "b\"", "control byte 0x01 at byte 2" },
	{ "[1,\x1f" "2]", "control byte 0x1f at byte 3" },
	{ "{\"a\":1}\x0b", "control byte 0x0b" },
	{ "{\"k\":1,\"k\":2}", "a key appears twice in one object" },
	{ "{\"m\":[{\"x\":{},\"x\":[]}]}", "a key appears twice" },
	/* the same key interned once and escaped once (its own block) */
	{ "{\"x\":1,\"\\u0078\":2}", "a key appears twice" },
	{ "{\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\":1,"
	  "\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\":2}", "a key appears twice" },
};

START_TEST(test_refused)
{
	const struct bad_case *c = &bad[_i];
	char err[160];
	cJSON *j = parse(c->text, err, sizeof err);
	ck_assert_msg(j == NULL, "%s: accepted", c->text);
	ck_assert_msg(strstr(err, c->why) != NULL, "%s: \"%s\" lacks \"%s\"", c->text, err, c->why);
}
END_TEST

/* The embedded NUL is a control byte too: lengths, not strlen. */
START_TEST(test_nul_byte)
{
	char err[160];
	ck_assert(jsonr_parse("[1,\0" "2]", 6, err, sizeof err) == NULL);
	ck_assert_msg(strstr(err, "control byte 0x00 at byte 3") != NULL, "%s", err);
	ck_assert(jsonr_parse("\"a\0\"", 4, err, sizeof err) == NULL);
	ck_assert(strstr(err, "control byte 0x00") != NULL);
	/* and nothing is read past n */
	ck_assert(jsonr_parse("[1]", 2, err, sizeof err) == NULL);
	ck_assert(jsonr_parse("\"abcdefghijklmnop\"", 17, err, sizeof err) == NULL);
	ck_assert(strstr(err, "closing quote") != NULL);
}
END_TEST

static char *nested(int levels)
{
	char *s = malloc((size_t)levels * 2 + 1);
	for (int i = 0; i < levels; i++) {
		s[i] = '[';
		s[levels * 2 - 1 - i] = ']';
	}
	s[levels * 2] = '\0';
	return s;
}

START_TEST(test_depth)
{
	char err[160];
	char *ok = nested(CJSON_NESTING_LIMIT), *deep = nested(CJSON_NESTING_LIMIT + 1);
	cJSON *j = parse(ok, err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	cJSON_Delete(j);
	ck_assert(parse(deep, err, sizeof err) == NULL);
	ck_assert_msg(strstr(err, "nesting too deep") != NULL, "%s", err);
	free(ok);
	free(deep);
}
END_TEST

/* n distinct keys, or n with the last repeating the one at dup. */
START_TEST(test_duplicate_keys)
{
	static const int sizes[] = { 2, 3, 63, 64, 65, 200 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		int n = sizes[k];
		for (int twice = 0; twice < 2; twice++) {
			char *text = malloc((size_t)n * 16 + 8), *o = text;
			*o++ = '{';
			for (int i = 0; i < n; i++)
				o += sprintf(o, "%s\"key%d\":%d", i ? "," : "", twice && i == n - 1 ? (n - 1) / 2 : i, i);
			*o++ = '}';
			*o = '\0';
			char err[160];
			cJSON *j = parse(text, err, sizeof err);
			ck_assert_msg((j != NULL) == !twice, "%d keys, twice %d: %s", n, twice, err);
			if (twice)
				ck_assert(strstr(err, "twice") != NULL);
			ck_assert(!j || cJSON_GetArraySize(j) == n);
			cJSON_Delete(j);
			free(text);
		}
	}
}
END_TEST

/* Whether o's first member has an interned key: jsonr read o. */
static bool jfind_first_const(const cJSON *o)
{
	return o->child && (o->child->type & cJSON_StringIsConst);
}

/* The key of object o's member named k, and that member. */
static const cJSON *member(const cJSON *o, const char *k)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, k);
	ck_assert_msg(m != NULL, "no member %s", k);
	return m;
}

START_TEST(test_blocks)
{
	const char *text = "{\"event\":\"smtp_server_mail_from\",\"meta\":{\"bench_rcpt\":\"a@b.example\","
			   "\"n\":1},\"args\":[\"x\",\"y\\\"z\"]}";
	char err[160];
	cJSON *a = parse(text, err, sizeof err), *b = parse(text, err, sizeof err);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	const cJSON *ev = member(a, "event"), *ev2 = member(b, "event");
	/* one copy of each key, shared by both documents */
	ck_assert(ev->type & cJSON_StringIsConst);
	ck_assert_ptr_eq(ev->string, ev2->string);
	ck_assert_ptr_eq(member(member(a, "meta"), "bench_rcpt")->string,
			 member(member(b, "meta"), "bench_rcpt")->string);
	/* the string value right after its node, escaped or not */
	ck_assert(ev->type & cJSON_IsReference);
	ck_assert(cJSON_IsString(ev));
	ck_assert_ptr_eq(ev->valuestring, (const char *)(ev + 1));
	const cJSON *yz = cJSON_GetArrayItem(member(a, "args"), 1);
	ck_assert(yz->type & cJSON_IsReference);
	ck_assert_str_eq(yz->valuestring, "y\"z");
	ck_assert_str_eq(cJSON_GetStringValue(ev), "smtp_server_mail_from");
	/* what callers do with them: copy, then free the original */
	cJSON *dup = cJSON_Duplicate(a, 1);
	cJSON_Delete(a);
	ck_assert_str_eq(member(dup, "event")->valuestring, "smtp_server_mail_from");
	ck_assert(!(member(dup, "event")->type & cJSON_IsReference));
	ck_assert_str_eq(member(member(dup, "meta"), "bench_rcpt")->valuestring, "a@b.example");
	/* move a member to another object under a new key, and back */
	cJSON *meta = cJSON_DetachItemFromObjectCaseSensitive(b, "meta");
	cJSON *other = cJSON_CreateObject();
	cJSON_AddItemToObject(other, "conn_meta", meta);
	ck_assert(!(meta->type & cJSON_StringIsConst));
	ck_assert_str_eq(meta->string, "conn_meta");
	cJSON *rcpt = cJSON_DetachItemFromObjectCaseSensitive(meta, "bench_rcpt");
	cJSON_AddItemToObject(b, "rcpt", rcpt);
	ck_assert_str_eq(member(b, "rcpt")->valuestring, "a@b.example");
	char *printed = cJSON_PrintUnformatted(dup);
	ck_assert_str_eq(printed, "{\"event\":\"smtp_server_mail_from\",\"meta\":{\"bench_rcpt\":"
				  "\"a@b.example\",\"n\":1},\"args\":[\"x\",\"y\\\"z\"]}");
	free(printed);
	cJSON_Delete(other);
	cJSON_Delete(b);
	cJSON_Delete(dup);
}
END_TEST

START_TEST(test_keys_not_interned)
{
	char longkey[200], text[400], err[160];
	memset(longkey, 'k', 65);
	longkey[65] = '\0';
	snprintf(text, sizeof text, "{\"%s\":1,\"%.64s\":2,\"esc\\u0041ped\":3}", longkey, longkey);
	cJSON *a = parse(text, err, sizeof err);
	ck_assert_msg(a != NULL, "%s", err);
	const cJSON *m = a->child;
	ck_assert_uint_eq(strlen(m->string), 65);             /* over the longest kept */
	ck_assert(!(m->type & cJSON_StringIsConst));
	ck_assert_uint_eq(strlen(m->next->string), 64);       /* the longest kept */
	ck_assert(m->next->type & cJSON_StringIsConst);
	ck_assert_str_eq(m->next->next->string, "escAped");   /* escapes: its own block */
	ck_assert(!(m->next->next->type & cJSON_StringIsConst));
	cJSON_Delete(a);
}
END_TEST

/* More distinct keys than the table keeps (2048): every document still
 * reads as cJSON reads it, the keys past the bound in blocks of their own,
 * and keys kept before the table filled are still shared. */
START_TEST(test_intern_bound)
{
	char err[160];
	cJSON *first = parse("{\"early\":1}", err, sizeof err);
	ck_assert(first->child->type & cJSON_StringIsConst);
	struct jbuf b = { 0 };
	jbuf_add(&b, "{", 1);
	for (int i = 0; i < 3000; i++) {
		char k[32];
		snprintf(k, sizeof k, "%s\"key%d\":%d", i ? "," : "", i, i);
		jbuf_add(&b, k, strlen(k));
	}
	jbuf_add(&b, "}", 1);
	cJSON *big = jsonr_parse(b.p, b.len, err, sizeof err);
	ck_assert_msg(big != NULL, "%s", err);
	cJSON *want = cJSON_ParseWithLength(b.p, b.len);
	same_tree(big, want, "3000 keys");
	int kept = 0, own = 0;
	for (const cJSON *c = big->child; c; c = c->next)
		(c->type & cJSON_StringIsConst) ? kept++ : own++;
	ck_assert_int_ge(kept, 2000);
	ck_assert_int_le(kept, 2048);
	ck_assert_int_eq(kept + own, 3000);
	cJSON *again = parse("{\"early\":2,\"never seen\":3}", err, sizeof err);
	ck_assert_ptr_eq(again->child->string, first->child->string);
	ck_assert(!(again->child->next->type & cJSON_StringIsConst));
	cJSON_Delete(again);
	cJSON_Delete(want);
	cJSON_Delete(big);
	cJSON_Delete(first);
	jbuf_free(&b);
}
END_TEST

/* jsonr_parse_any: jsonr's tree where jsonr takes the text, cJSON's where
 * only cJSON does (a key twice, a number past a double), NULL where
 * neither does. */
START_TEST(test_parse_any)
{
	const char *both = "{\"a\":1,\"b\":[\"x\"]}";
	cJSON *j = jsonr_parse_any(both, strlen(both));
	ck_assert_ptr_nonnull(j);
	ck_assert(jfind_first_const(j));
	cJSON_Delete(j);
	const char *twice = "{\"k\":1,\"k\":2}";
	j = jsonr_parse_any(twice, strlen(twice));
	ck_assert_ptr_nonnull(j);
	ck_assert_int_eq(cJSON_GetArraySize(j), 2);
	ck_assert_int_eq(j->child->valueint, 1);
	cJSON_Delete(j);
	const char *big = "[1e999]";
	j = jsonr_parse_any(big, strlen(big));
	ck_assert_ptr_nonnull(j);
	cJSON_Delete(j);
	ck_assert_ptr_null(jsonr_parse_any("{\"a\":", 5));
	ck_assert_ptr_null(jsonr_parse_any("", 0));
}
END_TEST

static Suite *jsonr_suite(void)
{
	Suite *s = suite_create("lib_jsonr");
	TCase *tc = tcase_create("jsonr");
	tcase_add_loop_test(tc, test_same_as_cjson, 0, (int)(sizeof good / sizeof good[0]));
	tcase_add_test(tc, test_random_documents);
	tcase_add_test(tc, test_decoded);
	tcase_add_loop_test(tc, test_refused, 0, (int)(sizeof bad / sizeof bad[0]));
	tcase_add_test(tc, test_nul_byte);
	tcase_add_test(tc, test_depth);
	tcase_add_test(tc, test_duplicate_keys);
	tcase_add_test(tc, test_blocks);
	tcase_add_test(tc, test_keys_not_interned);
	tcase_add_test(tc, test_intern_bound);
	tcase_add_test(tc, test_parse_any);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jsonr_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
