/* Check suite for lib/toml.c, tables walked by loops:
 *  - parse: TOML text -> the JSON document expected (compared with
 *    cJSON_Compare and with an exact comparison), or a substring of the
 *    error, line number included;
 *  - floats: a TOML float literal -> the double (inf, nan and -0.0 included,
 *    which JSON cannot spell);
 *  - round trip: JSON -> toml_encode (compact and pretty) -> toml_parse ->
 *    the same document;
 *  - encode: JSON -> the exact TOML text, compact or pretty;
 *  - encode errors: JSON -> a substring of the error;
 * and a few single tests: the depth limit, bytes past NUL, buffers that are
 * not NUL-terminated, non-finite numbers through the encoder. */
#include "lib/toml.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* exact equality: NaN equals NaN, -0.0 differs from 0, key order ignored */
static bool json_same(const cJSON *a, const cJSON *b)
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
			if (!json_same(x, y))
				return false;
		return !x && !y;
	}
	case cJSON_Object: {
		/* members usually come in the same order: look up only if not */
		int na = 0, nb = 0;
		const cJSON *next = b->child;
		for (const cJSON *x = a->child; x; x = x->next) {
			const cJSON *y = next;
			if (!y || strcmp(y->string, x->string) != 0)
				y = cJSON_GetObjectItemCaseSensitive(b, x->string);
			if (!y || !json_same(x, y))
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

/* ------------------------------------------------------------------ */

struct parse_case {
	const char *toml;
	const char *json; /* NULL: must fail */
	const char *why;  /* substring of the error */
};

#define OK(t, j) { t, j, NULL }
#define BAD(t, why) { t, NULL, why }

static const struct parse_case parse_cases[] = {
	/* the KumoMTA listener-parameter file */
	OK("[via.'10.0.0.1']\n"
	   "hostname = 'mx.example-customer.com'\n"
	   "tls_certificate = '/path/to/customer1.cert'\n",
	   "{\"via\":{\"10.0.0.1\":{\"hostname\":\"mx.example-customer.com\","
	   "\"tls_certificate\":\"/path/to/customer1.cert\"}}}"),
	OK("# listener\n[peer.\"10.0.0.0/24\"]\nmax_message_size = 1_000_000\n"
	   "[via.'10.0.0.1']\nhostname = 'mx'\n",
	   "{\"peer\":{\"10.0.0.0/24\":{\"max_message_size\":1000000}},"
	   "\"via\":{\"10.0.0.1\":{\"hostname\":\"mx\"}}}"),

	/* blank input, comments, whitespace, line endings */
	OK("", "{}"),
	OK("# only a comment\n", "{}"),
	OK("\n\n   \n\t\n", "{}"),
	OK("a = 1", "{\"a\":1}"),
	OK("a = 1 # comment\n# another\n", "{\"a\":1}"),
	OK("a=1\r\nb=2\r\n", "{\"a\":1,\"b\":2}"),
	OK("\xEF\xBB\xBF" "a = 1\n", "{\"a\":1}"),
	OK("  a = 1\n\tb = 2\n", "{\"a\":1,\"b\":2}"),
	OK("a = 1#no space\n", "{\"a\":1}"),
	BAD("a = 1\rb = 2", "line 1: unexpected text after value"),
	BAD("# a\x01" "b\n", "line 1: control character U+0001 in comment"),
	BAD("a = 1\n# \x7f\n", "line 2: control character U+007F in comment"),

	/* keys */
	OK("bare_key-1 = 1", "{\"bare_key-1\":1}"),
	OK("1234 = 1", "{\"1234\":1}"),
	OK("true = 1", "{\"true\":1}"),
	OK("\"quoted key\" = 1", "{\"quoted key\":1}"),
	OK("'lit \\ key' = 1", "{\"lit \\\\ key\":1}"),
	OK("\"\" = 1", "{\"\":1}"),
	OK("'' = 1", "{\"\":1}"),
	OK("\"\\u00e9\" = 1", "{\"\xC3\xA9\":1}"),
	OK("a.b.c = 1", "{\"a\":{\"b\":{\"c\":1}}}"),
	OK("a . b\t.\tc = 1", "{\"a\":{\"b\":{\"c\":1}}}"),
	OK("site.\"google.com\" = true", "{\"site\":{\"google.com\":true}}"),
	OK("3.14159 = 'pi'", "{\"3\":{\"14159\":\"pi\"}}"),
	OK("a.b = 1\na.c = 2\na.d.e = 3", "{\"a\":{\"b\":1,\"c\":2,\"d\":{\"e\":3}}}"),
	OK("a = 1\nA = 2", "{\"a\":1,\"A\":2}"),
	OK("1979-05-27 = 1\n-_- = 2\ninf = 3\nnan.true = 4",
	   "{\"1979-05-27\":1,\"-_-\":2,\"inf\":3,\"nan\":{\"true\":4}}"),
	BAD("= 1", "line 1: expected a key"),
	BAD(".a = 1", "invalid character '.' in key"),
	BAD("a. = 1", "expected a key"),
	BAD("a b = 1", "expected '=' after key 'a'"),
	BAD("a\n= 1", "line 1: expected '=' after key"),
	BAD("a =", "missing value"),
	BAD("a = # nothing", "missing value"),
	BAD("a = 1\na = 2", "line 2: duplicate key 'a'"),
	BAD("\"a\" = 1\na = 2", "line 2: duplicate key 'a'"),
	BAD("a.b = 1\na = 2", "duplicate key 'a'"),
	BAD("a = 1\na.b = 2", "line 2: key 'a' is already defined as a value"),
	BAD("a.b.c = 1\na.b = 2", "duplicate key 'b'"),
	BAD("\"\"\"k\"\"\" = 1", "multi-line"),
	BAD("\"a\nb\" = 1", "unterminated string"),
	BAD("a = 1 b = 2", "line 1: unexpected text after value"),
	BAD("k\x01 = 1", "expected '=' after key 'k'"),
	BAD("\x01k = 1", "invalid character in key"),
	BAD("a = { = 1 }", "expected a key"),

	/* tables */
	OK("[a]\nx = 1\n[b]\ny = 2\n", "{\"a\":{\"x\":1},\"b\":{\"y\":2}}"),
	OK("[a.b.c]\nx = 1", "{\"a\":{\"b\":{\"c\":{\"x\":1}}}}"),
	OK("[ a . 'b' . \"c\" ]\nx = 1", "{\"a\":{\"b\":{\"c\":{\"x\":1}}}}"),
	OK("[\"a.b\"]\nx = 1", "{\"a.b\":{\"x\":1}}"),
	OK("[a] # comment\nx = 1", "{\"a\":{\"x\":1}}"),
	OK("[a.b]\nx = 1\n[a]\ny = 2", "{\"a\":{\"b\":{\"x\":1},\"y\":2}}"),
	OK("[a]\n[b]\n[a.c]", "{\"a\":{\"c\":{}},\"b\":{}}"),
	OK("[a]\nb.c = 1\n[a.b.d]\nx = 1", "{\"a\":{\"b\":{\"c\":1,\"d\":{\"x\":1}}}}"),
	OK("a.b = 1\n[a.c]\nx = 2", "{\"a\":{\"b\":1,\"c\":{\"x\":2}}}"),
	BAD("[a]\n[a]", "line 2: table 'a' is already defined"),
	BAD("[a.b]\n[a.b]", "line 2: table 'b' is already defined"),
	BAD("[a]\nb = 1\n[a.b]", "line 3: key 'b' is already defined as a value"),
	BAD("[a]\nb.c = 1\n[a.b]", "line 3: table 'b' is already defined"),
	BAD("a.b = 1\n[a]", "line 2: table 'a' is already defined"),
	OK("[a.b.c]\n[a]\nb.x = 1\nb.y = 2\n[a.b.d]",
	   "{\"a\":{\"b\":{\"c\":{},\"x\":1,\"y\":2,\"d\":{}}}}"),
	BAD("[a.b.c]\nz = 1\n[a]\nb.c.t = 1", "line 4: cannot add to table 'c' with a dotted key"),
	BAD("[a.b.c]\n[a]\nb.x = 1\n[a.b]", "line 4: table 'b' is already defined"),
	BAD("[a.b]\n[a]\nb.x = 1", "line 3: cannot add to table 'b' with a dotted key"),
	BAD("[[t.a]]\n[t]\na.x = 1", "line 3: key 'a' is an array, not a table"),
	BAD("a = {}\n[a]", "line 2: table 'a' is already defined"),
	BAD("a = {}\n[a.b]", "line 2: cannot extend inline table 'a'"),
	BAD("a = 1\n[a.b]", "key 'a' is already defined as a value"),
	BAD("[]", "expected a key"),
	BAD("[a", "expected ']' to close the table header"),
	BAD("[a]x = 1", "unexpected text after table header"),
	BAD("[a.]", "expected a key"),

	/* arrays of tables */
	OK("[[a]]\nx = 1\n[[a]]\nx = 2", "{\"a\":[{\"x\":1},{\"x\":2}]}"),
	OK("[[a]]\n[[a]]", "{\"a\":[{},{}]}"),
	OK("[[a]]\nx = 1\n[a.b]\ny = 2\n[[a]]\nx = 3",
	   "{\"a\":[{\"x\":1,\"b\":{\"y\":2}},{\"x\":3}]}"),
	OK("[[a]]\n[[a.b]]\nx = 1\n[[a.b]]\nx = 2\n[[a]]",
	   "{\"a\":[{\"b\":[{\"x\":1},{\"x\":2}]},{}]}"),
	OK("[[a.b]]\n[a]\nx = 1", "{\"a\":{\"b\":[{}],\"x\":1}}"),
	OK("[[ a . b ]]\nx = 1", "{\"a\":{\"b\":[{\"x\":1}]}}"),
	BAD("a = [1]\n[[a]]", "line 2: cannot append to static array 'a'"),
	BAD("a = []\n[[a]]", "cannot append to static array 'a'"),
	BAD("[a]\n[[a]]", "line 2: 'a' is already defined as a table"),
	BAD("[a.b]\n[[a]]", "'a' is already defined as a table"),
	BAD("[[a]]\n[a]", "line 2: 'a' is already defined as an array"),
	BAD("a = 1\n[[a]]", "key 'a' is already defined as a value"),
	BAD("a = [1]\n[a.b]", "cannot extend static array 'a'"),
	BAD("[[a]]\nb = { x = 1 }\n[a.b.c]", "line 3: cannot extend inline table 'b'"),
	BAD("[[a]\nx = 1", "expected ']]'"),
	BAD("[[a]] x", "unexpected text after table header"),

	/* inline tables */
	OK("a = { x = 1, y = 'two' }", "{\"a\":{\"x\":1,\"y\":\"two\"}}"),
	OK("a = {}", "{\"a\":{}}"),
	OK("a = {x=1}", "{\"a\":{\"x\":1}}"),
	OK("a = { b.c = 1, b.d = 2 }", "{\"a\":{\"b\":{\"c\":1,\"d\":2}}}"),
	OK("a = { b = { c = [1, { d = true }] } }",
	   "{\"a\":{\"b\":{\"c\":[1,{\"d\":true}]}}}"),
	BAD("a = { x = 1, x = 2 }", "duplicate key 'x'"),
	BAD("a = { b = {}, b.c = 1 }", "cannot add keys to inline table 'b'"),
	BAD("a = { b = [], b.c = 1 }", "key 'b' is an array, not a table"),
	BAD("[[t]]\n[t.a]\n[t]", "line 3: 't' is already defined as an array"),
	BAD("a = { x = 1 }\na.y = 2", "line 2: cannot add keys to inline table 'a'"),
	BAD("a = { x = 1, }", "trailing comma in inline table"),
	BAD("a = { x = 1\n}", "line 1: inline table must close on the line it opens"),
	BAD("a = {\nx = 1 }", "expected a key"),
	BAD("a = { x = 1", "unterminated inline table"),
	BAD("a = { x = 1 y = 2 }", "expected ',' or '}' in inline table"),
	BAD("a = { x }", "expected '=' after key 'x'"),

	/* arrays */
	OK("a = [1, 2, 3]", "{\"a\":[1,2,3]}"),
	OK("a = []", "{\"a\":[]}"),
	OK("a = [ ]", "{\"a\":[]}"),
	OK("a = [1, 'two', 3.5, true, [4], { x = 5 }]",
	   "{\"a\":[1,\"two\",3.5,true,[4],{\"x\":5}]}"),
	OK("a = [\n  1,\n  2, # two\n  # alone\n]\nb = 1", "{\"a\":[1,2],\"b\":1}"),
	OK("a = [[1, 2], ['a', \"b\"], []]", "{\"a\":[[1,2],[\"a\",\"b\"],[]]}"),
	OK("a = [{ x = 1 }, { x = 2 }]", "{\"a\":[{\"x\":1},{\"x\":2}]}"),
	BAD("a = [1 2]", "expected ',' or ']' in array"),
	BAD("a = [1,,2]", "missing value"),
	BAD("a = [,]", "missing value"),
	BAD("a = [1", "unterminated array"),
	BAD("a = [1,\n2,\n3", "line 3: unterminated array"),
	BAD("a = [1] 2", "unexpected text after value"),
	BAD("a = [1, # \x02\n]", "control character U+0002 in comment"),

	/* basic strings */
	OK("s = \"hello\"", "{\"s\":\"hello\"}"),
	OK("s = \"\\b\\t\\n\\f\\r\\\"\\\\\"", "{\"s\":\"\\b\\t\\n\\f\\r\\\"\\\\\"}"),
	OK("s = \"\\u00E9\\U0001F600\"", "{\"s\":\"\xC3\xA9\xF0\x9F\x98\x80\"}"),
	OK("s = \"\\u007F\\u0001\"", "{\"s\":\"\\u007f\\u0001\"}"),
	OK("s = \"\xC3\xA9t\xC3\xA9 \xE2\x82\xAC\"", "{\"s\":\"\xC3\xA9t\xC3\xA9 \xE2\x82\xAC\"}"),
	OK("s = \"a\tb\"", "{\"s\":\"a\\tb\"}"),
	OK("s = \"# not a comment\"", "{\"s\":\"# not a comment\"}"),
	BAD("s = \"\\x41\"", "invalid escape '\\x'"),
	BAD("s = \"\\e\"", "invalid escape '\\e'"),
	BAD("s = \"\\ \"", "invalid escape"),
	BAD("s = \"\\uD800\"", "not a Unicode scalar value"),
	BAD("s = \"\\U00110000\"", "not a Unicode scalar value"),
	BAD("s = \"\\u12\"", "\\u escape needs 4 hex digits"),
	BAD("s = \"\\U0001F60\"", "\\U escape needs 8 hex digits"),
	BAD("s = \"\\u0000\"", "U+0000"),
	BAD("s = \"abc", "unterminated string"),
	BAD("s = \"abc\ndef\"", "line 1: unterminated string"),
	BAD("s = \"a\x01" "b\"", "control character U+0001 in string"),
	BAD("s = \"a\x7f\"", "control character U+007F in string"),
	BAD("s = \"a\rb\"", "control character U+000D in string"),

	/* literal strings */
	OK("s = 'C:\\Users\\nodejs'", "{\"s\":\"C:\\\\Users\\\\nodejs\"}"),
	OK("s = '<\\i\\c*\\s*>'", "{\"s\":\"<\\\\i\\\\c*\\\\s*>\"}"),
	OK("s = 'say \"hi\"'", "{\"s\":\"say \\\"hi\\\"\"}"),
	BAD("s = 'a\nb'", "unterminated string"),
	BAD("s = 'a\x01'", "control character U+0001 in string"),
	BAD("s = 'it''s'", "unexpected text after value"),

	/* multi-line strings */
	OK("s = \"\"\"\nRoses\nViolets\"\"\"", "{\"s\":\"Roses\\nViolets\"}"),
	OK("s = \"\"\"\r\na\r\nb\"\"\"", "{\"s\":\"a\\nb\"}"),
	OK("s = \"\"\"\nThe quick \\\n\n   brown \\\n  fox.\"\"\"",
	   "{\"s\":\"The quick brown fox.\"}"),
	OK("s = \"\"\"a \\   \n  b\"\"\"", "{\"s\":\"a b\"}"),
	OK("s = \"\"\"a\\tb \\u00e9\"\"\"", "{\"s\":\"a\\tb \xC3\xA9\"}"),
	OK("s = \"\"\"\"\"\"\"\"", "{\"s\":\"\\\"\\\"\"}"),
	OK("s = \"\"\"x \"\" y\"\"\"", "{\"s\":\"x \\\"\\\" y\"}"),
	OK("s = \"\"\"\n\"\"\"", "{\"s\":\"\"}"),
	OK("s = \"\"\"\"\"\"", "{\"s\":\"\"}"),
	OK("s = \"\"\"\n\n a\"\"\"\nt = 1", "{\"s\":\"\\n a\",\"t\":1}"),
	OK("s = '''\nline1\n  line2\\n'''", "{\"s\":\"line1\\n  line2\\\\n\"}"),
	OK("s = ''''a''''", "{\"s\":\"'a'\"}"),
	OK("s = '''a '' b'''", "{\"s\":\"a '' b\"}"),
	OK("s = '''\n'''", "{\"s\":\"\"}"),
	OK("s = \"\"\"a\"\"\"\nb = \"\"\"\n2\n\"\"\"\nc = 3",
	   "{\"s\":\"a\",\"b\":\"2\\n\",\"c\":3}"),
	BAD("s = \"\"\"a\"\"\"\"\"\"", "too many quotes"),
	BAD("s = '''a''''''", "too many quotes"),
	BAD("s = \"\"\"abc\n", "unterminated multi-line string"),
	BAD("s = '''abc", "unterminated multi-line string"),
	BAD("s = \"\"\"a\\ b\"\"\"", "invalid escape"),
	BAD("s = \"\"\"\na\n\x01\"\"\"", "line 3: control character U+0001 in string"),
	BAD("s = '''a\x7f'''", "control character U+007F in string"),
	BAD("s = \"\"\"\n\n\n\\q\"\"\"", "line 4: invalid escape '\\q'"),

	/* invalid UTF-8 anywhere */
	BAD("s = \"\xFF\"", "line 1: invalid UTF-8"),
	BAD("a = 1\n# \xC3\x28\n", "line 2: invalid UTF-8"),
	BAD("s = '\xC0\xAF'", "invalid UTF-8"),          /* overlong */
	BAD("s = '\xED\xA0\x80'", "invalid UTF-8"),      /* surrogate */
	BAD("s = '\xF4\x90\x80\x80'", "invalid UTF-8"),  /* past U+10FFFF */
	BAD("s = '\xE2\x82'", "invalid UTF-8"),          /* truncated */

	/* integers */
	OK("a = 42\nb = +17\nc = -17\nd = 0\ne = +0\nf = -0",
	   "{\"a\":42,\"b\":17,\"c\":-17,\"d\":0,\"e\":0,\"f\":0}"),
	OK("a = 1_000_000\nb = 5_349_221\nc = 1_2_3_4_5",
	   "{\"a\":1000000,\"b\":5349221,\"c\":12345}"),
	OK("a = 0xDEADBEEF\nb = 0xdead_beef\nc = 0x00ff", "{\"a\":3735928559,\"b\":3735928559,\"c\":255}"),
	OK("a = 0o755\nb = 0o0_1", "{\"a\":493,\"b\":1}"),
	OK("a = 0b1101_0110\nb = 0b0", "{\"a\":214,\"b\":0}"),
	OK("a = 9223372036854775807\nb = -9223372036854775808",
	   "{\"a\":9223372036854775807,\"b\":-9223372036854775808}"),
	OK("a = 0x7FFFFFFFFFFFFFFF", "{\"a\":9223372036854775807}"),
	OK("a = [1,2,-3]", "{\"a\":[1,2,-3]}"),
	BAD("a = 9223372036854775808", "integer out of 64-bit range"),
	BAD("a = -9223372036854775809", "integer out of 64-bit range"),
	BAD("a = 0x8000000000000000", "integer out of 64-bit range"),
	BAD("a = 99999999999999999999999", "integer out of 64-bit range"),
	BAD("a = 012", "leading zeros"),
	BAD("a = -01", "leading zeros"),
	BAD("a = 0_1", "leading zeros"),
	BAD("a = 1__0", "'_' must stand between digits"),
	BAD("a = 1_", "'_' must stand between digits"),
	BAD("a = _1", "invalid value"),
	BAD("a = +0x1", "takes no sign"),
	BAD("a = 0X1", "invalid number"),
	BAD("a = 0x", "invalid hexadecimal integer"),
	BAD("a = 0x_1", "invalid hexadecimal integer"),
	BAD("a = 0b102", "invalid binary integer"),
	BAD("a = 0o8", "invalid octal integer"),
	BAD("a = 1a", "invalid number"),
	BAD("a = 1-2", "invalid number"),
	BAD("a = 1 2", "unexpected text after value"),
	BAD("a = 1979-05", "invalid number"),

	/* floats (more in float_cases) */
	OK("a = 3.1415\nb = -0.01\nc = +1.5\nd = 0.0",
	   "{\"a\":3.1415,\"b\":-0.01,\"c\":1.5,\"d\":0}"),
	OK("a = 5e+22\nb = 1e06\nc = -2E-2\nd = 6.626e-34\ne = 0e0",
	   "{\"a\":5e22,\"b\":1e6,\"c\":-0.02,\"d\":6.626e-34,\"e\":0}"),
	OK("a = 224_617.445_991_228\nb = 1e1_0", "{\"a\":224617.445991228,\"b\":1e10}"),
	BAD("a = .7", "invalid value"),
	BAD("a = 7.", "a digit must follow '.'"),
	BAD("a = 3.e+20", "a digit must follow '.'"),
	BAD("a = 1e", "the exponent needs digits"),
	BAD("a = 1e+", "the exponent needs digits"),
	BAD("a = 01.5", "leading zeros"),
	BAD("a = 1.5_", "'_' must stand between digits"),
	BAD("a = 1._5", "'_' must stand between digits"),
	BAD("a = 1.0.0", "invalid number"),
	BAD("a = 1e400", "float out of range"),
	BAD("a = -1e400", "float out of range"),
	BAD("a = infinity", "invalid value"),
	BAD("a = Inf", "invalid value"),
	BAD("a = NaN", "invalid value"),

	/* booleans */
	OK("t = true\nf = false", "{\"t\":true,\"f\":false}"),
	OK("a = [true,false]", "{\"a\":[true,false]}"),
	BAD("b = True", "invalid value"),
	BAD("b = truee", "invalid value"),
	BAD("b = fals", "invalid value"),

	/* dates and times: kept as their text */
	OK("d = 1979-05-27T07:32:00Z", "{\"d\":\"1979-05-27T07:32:00Z\"}"),
	OK("d = 1979-05-27T00:32:00-07:00", "{\"d\":\"1979-05-27T00:32:00-07:00\"}"),
	OK("d = 1979-05-27T00:32:00.999999+07:00", "{\"d\":\"1979-05-27T00:32:00.999999+07:00\"}"),
	OK("d = 1979-05-27 07:32:00Z", "{\"d\":\"1979-05-27 07:32:00Z\"}"),
	OK("d = 1979-05-27t07:32:00z", "{\"d\":\"1979-05-27t07:32:00z\"}"),
	OK("d = 1979-05-27T07:32:00", "{\"d\":\"1979-05-27T07:32:00\"}"),
	OK("d = 1979-05-27 # a date", "{\"d\":\"1979-05-27\"}"),
	OK("d = 07:32:00\ne = 00:32:00.999999", "{\"d\":\"07:32:00\",\"e\":\"00:32:00.999999\"}"),
	OK("d = 2000-02-29\ne = 1990-12-31T23:59:60Z",
	   "{\"d\":\"2000-02-29\",\"e\":\"1990-12-31T23:59:60Z\"}"),
	OK("d = [1979-05-27, 07:32:00, 1979-05-27T07:32:00Z]",
	   "{\"d\":[\"1979-05-27\",\"07:32:00\",\"1979-05-27T07:32:00Z\"]}"),
	OK("d = { when = 1979-05-27 }", "{\"d\":{\"when\":\"1979-05-27\"}}"),
	BAD("d = 1900-02-29", "invalid date: out of range"),
	BAD("d = 2023-13-01", "invalid date: out of range"),
	BAD("d = 2023-04-31", "invalid date: out of range"),
	BAD("d = 2023-00-10", "invalid date: out of range"),
	BAD("d = 1979-05-27T25:00:00", "invalid time: out of range"),
	BAD("d = 1979-05-27T07:60:00", "invalid time: out of range"),
	BAD("d = 07:32", "invalid time: expected HH:MM:SS"),
	BAD("d = 1979-05-27T", "invalid time: expected HH:MM:SS"),
	BAD("d = 1979-05-27T07:32:00+7:00", "invalid time offset"),
	BAD("d = 1979-05-27T07:32:00+24:00", "invalid time offset"),
	BAD("d = 07:32:00Z", "invalid date or time"),
	BAD("d = 1979-05-27Z", "invalid date or time"),
	BAD("d = 1979-05-27T07:32:00.", "a digit must follow '.'"),
	BAD("d = 1979-05-27 07:32", "invalid time"),
	BAD("d = 1979-05-27 x", "unexpected text after value"),

	/* error line numbers count every newline, in strings and arrays too */
	BAD("a = 1\n\n[t]\ns = '''\n\n'''\nx = [\n1,\n]\nb = @", "line 10: invalid value"),
	BAD("a = \"\"\"\\\n\n\n\"\"\"\nb", "line 5: expected '=' after key 'b'"),
};

START_TEST(test_parse_table)
{
	const struct parse_case *c = &parse_cases[_i];
	char err[256] = "";
	cJSON *got = toml_parse(c->toml, strlen(c->toml), err, sizeof err);
	if (!c->json) {
		char *s = got ? cJSON_PrintUnformatted(got) : NULL;
		ck_assert_msg(!got, "row %d: parse should fail (%s), gave %s", _i, c->why, s);
		ck_assert_msg(strstr(err, c->why) != NULL, "row %d: error \"%s\" lacks \"%s\"", _i,
			      err, c->why);
		return;
	}
	ck_assert_msg(got != NULL, "row %d: %s", _i, err);
	cJSON *want = cJSON_Parse(c->json);
	ck_assert_msg(want != NULL, "row %d: bad expected JSON", _i);
	char *s = cJSON_PrintUnformatted(got);
	ck_assert_msg(cJSON_Compare(want, got, 1), "row %d: got %s, want %s", _i, s, c->json);
	ck_assert_msg(json_same(want, got), "row %d: got %s, want %s (exact)", _i, s, c->json);
	free(s);
	cJSON_Delete(want);
	cJSON_Delete(got);
}
END_TEST

/* ------------------------------------------------------------------ */

struct float_case {
	const char *lit;
	double want;
};

static const struct float_case float_cases[] = {
	{ "inf", INFINITY },
	{ "+inf", INFINITY },
	{ "-inf", -INFINITY },
	{ "nan", NAN },
	{ "+nan", NAN },
	{ "-nan", NAN },
	{ "-0.0", -0.0 },
	{ "+0.0", 0.0 },
	{ "-0e0", -0.0 },
	{ "3.1415", 3.1415 },
	{ "9_224_617.445_991_228_313", 9224617.445991228313 },
	{ "1E6", 1e6 },
	{ "1e-320", 1e-320 },      /* subnormal */
	{ "1e-400", 0.0 },         /* underflow rounds to zero */
	{ "1.7976931348623157e308", 1.7976931348623157e308 },
};

START_TEST(test_float_table)
{
	const struct float_case *c = &float_cases[_i];
	char text[128], err[256] = "";
	int n = snprintf(text, sizeof text, "f = %s\n", c->lit);
	ck_assert(n > 0 && (size_t)n < sizeof text);
	cJSON *got = toml_parse(text, (size_t)n, err, sizeof err);
	ck_assert_msg(got != NULL, "row %d: %s", _i, err);
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(got, "f");
	ck_assert_msg(cJSON_IsNumber(f), "row %d: not a number", _i);
	double d = f->valuedouble;
	if (isnan(c->want))
		ck_assert_msg(isnan(d), "row %d: %s gave %g", _i, c->lit, d);
	else
		ck_assert_msg(d == c->want && signbit(d) == signbit(c->want),
			      "row %d: %s gave %.17g", _i, c->lit, d);
	cJSON_Delete(got);
}
END_TEST

/* ------------------------------------------------------------------ */

static const char *const roundtrip_cases[] = {
	"{\"via\":{\"10.0.0.1\":{\"hostname\":\"mx.example-customer.com\","
	"\"tls_certificate\":\"/path/to/customer1.cert\"}}}",
	"{}",
	"{\"a\":1,\"b\":-2.5,\"c\":true,\"d\":false,\"e\":\"x\"}",
	"{\"s\":\"quote \\\" backslash \\\\ nl \\n tab \\t cr \\r bs \\b ff \\f "
	"ctl \\u0001 \\u001f del \\u007f \xC3\xA9 \xF0\x9F\x98\x80 '''\\\"\\\"\\\"\"}",
	"{\"key with spaces\":1,\"\":2,\"a.b\":3,\"\xC3\xA9\":4,\"\\\"q\\\"\":5,\"'\":6,"
	"\"#\":7,\"=\":8,\"[x]\":9,\"tab\\tkey\":10}",
	"{\"a\":{\"b\":{\"c\":{}}}}",
	"{\"a\":{\"b\":1,\"c\":{\"d\":2}},\"e\":3}",
	"{\"arr\":[1,\"two\",[3,[4]],{\"x\":5},[],{}]}",
	"{\"aot\":[{\"x\":1},{\"y\":{\"z\":2}},{}]}",
	"{\"aot\":[{\"inner\":[{\"a\":1},{\"a\":2}],\"k\":\"v\"}],\"after\":{\"x\":1}}",
	"{\"mixed\":[{\"a\":1},2,\"three\"]}",
	"{\"nums\":[9.007199254740993e18,1e-300,-123456789012,0.1,9007199254740992,"
	"9007199254740994,-9007199254740994,1e300,-0.0,1.7976931348623157e308,5e-324,"
	"0.30000000000000004,123456.789,-1,0]}",
	"{\"empty_arr\":[],\"empty_obj\":{},\"arr_of_empty\":[{}],\"nested_empty\":[[]]}",
	"{\"long\":[\"aaaaaaaaaaaaaaaaaaaa\",\"bbbbbbbbbbbbbbbbbbbbbb\",\"cccccccccccccccccccccc\","
	"\"dddddddddddddddddddddd\",[1,2,3],{\"k\":[\"x\",\"y\"]}]}",
	"{\"x\":{\"y\":[{\"z\":[1,2],\"w\":{\"v\":[{\"u\":true}]}}]}}",
	"{\"nested_inline\":[[{\"a\":{\"b\":[{\"c\":1}]}}]]}",
	"{\"1\":{\"2\":3},\"true\":false,\"inf\":\"nan\"}",
	"{\"t\":\"1979-05-27T07:32:00Z\",\"d\":\"1979-05-27\",\"n\":\"12\"}",
	"{\"only_sub\":{\"a\":{\"b\":{\"c\":1}}},\"only_aot\":{\"list\":[{\"i\":1},{\"i\":2}]}}",
	"{\"a\":[{\"b\":{\"c\":[{\"d\":{}}]}}]}",
	"{\"root\":1,\"t\":{\"x\":1,\"sub\":{\"y\":2},\"z\":3},\"s\":\"after\"}",
	"{\"peer\":{\"10.0.0.0/24\":{\"max_message_size\":1000000,\"relay_hosts\":[\"10.0.0.0/8\"],"
	"\"trace_headers\":{\"received_header\":true,\"include_meta_names\":[]}}}}",
};

START_TEST(test_roundtrip_table)
{
	cJSON *want = cJSON_Parse(roundtrip_cases[_i]);
	ck_assert_msg(want != NULL, "row %d: bad JSON", _i);
	for (int pretty = 0; pretty <= 1; pretty++) {
		char err[256] = "";
		char *toml = toml_encode(want, pretty, err, sizeof err);
		ck_assert_msg(toml != NULL, "row %d pretty %d: %s", _i, pretty, err);
		cJSON *got = toml_parse(toml, strlen(toml), err, sizeof err);
		ck_assert_msg(got != NULL, "row %d pretty %d: %s in\n%s", _i, pretty, err, toml);
		char *s = cJSON_PrintUnformatted(got);
		ck_assert_msg(json_same(want, got) && cJSON_Compare(want, got, 1),
			      "row %d pretty %d: %s\nbecame\n%s", _i, pretty, toml, s);
		free(s);
		free(toml);
		cJSON_Delete(got);
	}
	cJSON_Delete(want);
}
END_TEST

/* ------------------------------------------------------------------ */

struct encode_case {
	const char *json;
	int pretty;
	const char *toml;
};

static const struct encode_case encode_cases[] = {
	{ "{}", 0, "" },
	{ "{\"a\":1,\"b\":\"x\"}", 0, "a = 1\nb = \"x\"\n" },
	{ "{\"via\":{\"10.0.0.1\":{\"hostname\":\"mx.example-customer.com\"}}}", 0,
	  "[via.\"10.0.0.1\"]\nhostname = \"mx.example-customer.com\"\n" },
	{ "{\"a\":1,\"t\":{\"b\":2},\"u\":{\"c\":3}}", 1, "a = 1\n\n[t]\nb = 2\n\n[u]\nc = 3\n" },
	{ "{\"a\":1,\"t\":{\"b\":2},\"u\":{\"c\":3}}", 0, "a = 1\n[t]\nb = 2\n[u]\nc = 3\n" },
	{ "{\"t\":{\"sub\":{\"x\":1},\"y\":2}}", 0, "[t]\ny = 2\n[t.sub]\nx = 1\n" },
	{ "{\"aot\":[{\"x\":1},{\"x\":2}]}", 0, "[[aot]]\nx = 1\n[[aot]]\nx = 2\n" },
	{ "{\"aot\":[{\"x\":1},{}]}", 1, "[[aot]]\nx = 1\n\n[[aot]]\n" },
	{ "{\"e\":{},\"a\":[]}", 0, "a = []\n[e]\n" },
	{ "{\"f\":1.5,\"i\":3.0,\"g\":1e20,\"n\":-0.0,\"h\":0.1,\"big\":9007199254740994,"
	  "\"m\":-9007199254740992}",
	  0, "f = 1.5\ni = 3\ng = 1e+20\nn = -0.0\nh = 0.1\n"
	     "big = 9007199254740994.0\nm = -9007199254740992\n" },
	{ "{\"s\":\"a\\\"b\\\\c\\u0001\\u007f\\n\xC3\xA9\"}", 0,
	  "s = \"a\\\"b\\\\c\\u0001\\u007F\\n\xC3\xA9\"\n" },
	{ "{\"k y\":{\"z\":1},\"\":true,\"a-b_c\":1}", 0,
	  "\"\" = true\na-b_c = 1\n[\"k y\"]\nz = 1\n" },
	{ "{\"a\":[1,{\"b\":2,\"c\":[]}],\"e\":[{}, 1]}", 0,
	  "a = [1, { b = 2, c = [] }]\ne = [{}, 1]\n" },
	{ "{\"long\":[\"aaaaaaaaaaaaaaaaaaaa\",\"bbbbbbbbbbbbbbbbbbbb\",\"cccccccccccccccccccc\","
	  "\"dddd\"]}",
	  1,
	  "long = [\n    \"aaaaaaaaaaaaaaaaaaaa\",\n    \"bbbbbbbbbbbbbbbbbbbb\",\n"
	  "    \"cccccccccccccccccccc\",\n    \"dddd\",\n]\n" },
	{ "{\"long\":[\"aaaaaaaaaaaaaaaaaaaa\",\"bbbbbbbbbbbbbbbbbbbb\",\"cccccccccccccccccccc\","
	  "\"dddd\"]}",
	  0,
	  "long = [\"aaaaaaaaaaaaaaaaaaaa\", \"bbbbbbbbbbbbbbbbbbbb\", \"cccccccccccccccccccc\", "
	  "\"dddd\"]\n" },
	{ "{\"short\":[1,2,3]}", 1, "short = [1, 2, 3]\n" },
	{ "{\"a\":{\"b\":{\"c\":1}}}", 1, "[a.b]\nc = 1\n" },
	{ "{\"x\":[{\"y\":{\"z\":1}}]}", 0, "[[x]]\n[x.y]\nz = 1\n" },
};

START_TEST(test_encode_table)
{
	const struct encode_case *c = &encode_cases[_i];
	cJSON *in = cJSON_Parse(c->json);
	ck_assert_msg(in != NULL, "row %d: bad JSON", _i);
	char err[256] = "";
	char *toml = toml_encode(in, c->pretty, err, sizeof err);
	ck_assert_msg(toml != NULL, "row %d: %s", _i, err);
	ck_assert_msg(strcmp(toml, c->toml) == 0, "row %d: got\n%s\nwant\n%s", _i, toml, c->toml);
	free(toml);
	cJSON_Delete(in);
}
END_TEST

/* ------------------------------------------------------------------ */

struct encode_err_case {
	const char *json;
	const char *why;
};

static const struct encode_err_case encode_err_cases[] = {
	{ "[1]", "root must be an object" },
	{ "\"x\"", "root must be an object" },
	{ "{\"a\":null}", "null has no TOML form (key 'a')" },
	{ "{\"a\":[1,null]}", "null has no TOML form" },
	{ "{\"a\":{\"b\":{\"c\":null}}}", "null has no TOML form (key 'c')" },
	{ "{\"a\":[{\"b\":null}]}", "null has no TOML form" },
	{ "{\"a\":[[{\"b\":null}]]}", "null has no TOML form" },
	{ "{\"a\":1,\"a\":2}", "duplicate key 'a'" },
	{ "{\"t\":{\"x\":1,\"x\":{}}}", "duplicate key 'x'" },
	{ "{\"a\":[{\"x\":1,\"x\":1}, 2]}", "duplicate key 'x'" },
	{ "{\"a\":\"\xFF\"}", "not valid UTF-8" },
	{ "{\"\xC3\":1}", "not valid UTF-8" },
	{ "{\"t\":{\"\xED\xA0\x80\":{}}}", "not valid UTF-8" },
};

START_TEST(test_encode_err_table)
{
	const struct encode_err_case *c = &encode_err_cases[_i];
	cJSON *in = cJSON_Parse(c->json);
	ck_assert_msg(in != NULL, "row %d: bad JSON", _i);
	char err[256] = "";
	char *toml = toml_encode(in, _i % 2, err, sizeof err);
	ck_assert_msg(toml == NULL, "row %d: encoded as\n%s", _i, toml);
	ck_assert_msg(strstr(err, c->why) != NULL, "row %d: error \"%s\" lacks \"%s\"", _i, err,
		      c->why);
	cJSON_Delete(in);
}
END_TEST

/* ------------------------------------------------------------------ */
/* single cases */

static char *repeat(const char *head, const char *unit, int n, const char *tail)
{
	size_t len = strlen(head) + strlen(unit) * (size_t)n + strlen(tail) + 1;
	char *s = malloc(len);
	ck_assert(s != NULL);
	size_t o = 0;
	memcpy(s, head, strlen(head));
	o += strlen(head);
	for (int i = 0; i < n; i++) {
		memcpy(s + o, unit, strlen(unit));
		o += strlen(unit);
	}
	memcpy(s + o, tail, strlen(tail) + 1);
	return s;
}

START_TEST(test_depth_limit)
{
	char err[256];
	/* a = [[[...]]]: a's array is depth 1, so 128 brackets reach 128 */
	char *open = repeat("a = ", "[", TOML_MAX_DEPTH, "");
	char *ok = repeat(open, "]", TOML_MAX_DEPTH, "\n");
	cJSON *j = toml_parse(ok, strlen(ok), err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	char *toml = toml_encode(j, 0, err, sizeof err);
	ck_assert_msg(toml != NULL, "%s", err);
	cJSON *back = toml_parse(toml, strlen(toml), err, sizeof err);
	ck_assert_msg(back && json_same(j, back), "%s", err);
	cJSON_Delete(back);
	free(toml);
	/* one level more: the encoder refuses it too */
	cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "a");
	cJSON *inner = arr;
	while (inner->child)
		inner = inner->child;
	cJSON_AddItemToArray(inner, cJSON_CreateNumber(1));
	toml = toml_encode(j, 0, err, sizeof err);
	ck_assert_msg(toml == NULL && strstr(err, "nesting deeper than 128"), "%s", err);
	cJSON_Delete(j);
	free(ok);
	free(open);

	open = repeat("a = ", "[", TOML_MAX_DEPTH + 1, "");
	char *bad = repeat(open, "]", TOML_MAX_DEPTH + 1, "\n");
	j = toml_parse(bad, strlen(bad), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "line 1: nesting deeper than 128"), "%s", err);
	free(bad);
	free(open);

	/* hostile: a million brackets fail fast, without deep recursion */
	bad = repeat("a = ", "[", 1000000, "");
	j = toml_parse(bad, strlen(bad), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "nesting deeper"), "%s", err);
	free(bad);
	bad = repeat("a = ", "{b=", 1000000, "");
	j = toml_parse(bad, strlen(bad), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "nesting deeper"), "%s", err);
	free(bad);

	/* headers: 128 parts is a table at depth 128, then no room for keys */
	char *hdr = repeat("[x", ".x", TOML_MAX_DEPTH - 1, "]\n");
	j = toml_parse(hdr, strlen(hdr), err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	cJSON_Delete(j);
	char *hdr2 = repeat(hdr, "", 0, "k = 1\n");
	j = toml_parse(hdr2, strlen(hdr2), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "line 2: nesting deeper"), "%s", err);
	free(hdr2);
	free(hdr);
	hdr = repeat("[x", ".x", TOML_MAX_DEPTH, "]\n");
	j = toml_parse(hdr, strlen(hdr), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "more than 128 parts"), "%s", err);
	free(hdr);
	hdr = repeat("[[x", ".x", TOML_MAX_DEPTH - 2, "]]\n");
	j = toml_parse(hdr, strlen(hdr), err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	cJSON_Delete(j);
	free(hdr);
	hdr = repeat("[[x", ".x", TOML_MAX_DEPTH - 1, "]]\n");
	j = toml_parse(hdr, strlen(hdr), err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "nesting deeper"), "%s", err);
	free(hdr);
	hdr = repeat("k", ".k", TOML_MAX_DEPTH - 1, " = 1\n");
	j = toml_parse(hdr, strlen(hdr), err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	cJSON_Delete(j);
	free(hdr);
}
END_TEST

START_TEST(test_length_not_nul)
{
	char err[256];
	/* the length is what counts: bytes after it are ignored ... */
	const char *text = "a = 1\nb = 2";
	cJSON *j = toml_parse(text, 5, err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	ck_assert_int_eq(cJSON_GetArraySize(j), 1);
	cJSON_Delete(j);
	/* ... a string cut by the length is unterminated ... */
	j = toml_parse("s = 'abc'", 8, err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "unterminated string"), "%s", err);
	/* ... and NUL bytes inside it are errors, not the end */
	const char nul1[] = "a = 1\0b = 2";
	j = toml_parse(nul1, sizeof nul1 - 1, err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "unexpected text after value"), "%s", err);
	const char nul2[] = "s = \"a\0b\"";
	j = toml_parse(nul2, sizeof nul2 - 1, err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "control character U+0000"), "%s", err);
	const char nul3[] = "# \0\n";
	j = toml_parse(nul3, sizeof nul3 - 1, err, sizeof err);
	ck_assert_msg(j == NULL && strstr(err, "control character U+0000 in comment"), "%s", err);
	/* no text at all is an empty document */
	j = toml_parse(NULL, 0, err, sizeof err);
	ck_assert_msg(j != NULL && cJSON_GetArraySize(j) == 0, "%s", err);
	cJSON_Delete(j);
	/* a NULL or tiny error buffer is fine */
	ck_assert_ptr_null(toml_parse("a =", 3, NULL, 0));
	char tiny[8];
	ck_assert_ptr_null(toml_parse("a =", 3, tiny, sizeof tiny));
	ck_assert_str_eq(tiny, "line 1:");
	ck_assert_ptr_null(toml_encode(NULL, 0, tiny, sizeof tiny));
	ck_assert_str_eq(tiny, "root mu");
}
END_TEST

START_TEST(test_encode_nonfinite)
{
	char err[256];
	cJSON *j = cJSON_CreateObject();
	cJSON_AddNumberToObject(j, "pinf", INFINITY);
	cJSON_AddNumberToObject(j, "ninf", -INFINITY);
	cJSON_AddNumberToObject(j, "nan", NAN);
	cJSON_AddNumberToObject(j, "negzero", -0.0);
	char *toml = toml_encode(j, 0, err, sizeof err);
	ck_assert_msg(toml != NULL, "%s", err);
	ck_assert_str_eq(toml, "pinf = inf\nninf = -inf\nnan = nan\nnegzero = -0.0\n");
	cJSON *back = toml_parse(toml, strlen(toml), err, sizeof err);
	ck_assert_msg(back != NULL && json_same(j, back), "%s", err);
	cJSON_Delete(back);
	free(toml);
	/* a raw item has no TOML form either */
	cJSON_AddRawToObject(j, "raw", "[1]");
	ck_assert_ptr_null(toml_encode(j, 0, err, sizeof err));
	ck_assert_msg(strstr(err, "no TOML form") != NULL, "%s", err);
	cJSON_Delete(j);
}
END_TEST

/* a table with many keys and many [[...]] elements stays linear */
START_TEST(test_many_keys)
{
	char err[256];
	size_t n = 200000, cap = n * 40, o = 0;
	char *s = malloc(cap);
	ck_assert(s != NULL);
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(s + o, cap - o, "k%zu = %zu\n", i, i);
		ck_assert(w > 0 && (size_t)w < cap - o);
		o += (size_t)w;
	}
	for (size_t i = 0; i < n / 4; i++) {
		int w = snprintf(s + o, cap - o, "[[t]]\nx = %zu\n", i);
		ck_assert(w > 0 && (size_t)w < cap - o);
		o += (size_t)w;
	}
	cJSON *j = toml_parse(s, o, err, sizeof err);
	ck_assert_msg(j != NULL, "%s", err);
	ck_assert_int_eq(cJSON_GetArraySize(j), (int)n + 1);
	ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "t")), (int)n / 4);
	char *toml = toml_encode(j, 1, err, sizeof err);
	ck_assert_msg(toml != NULL, "%s", err);
	cJSON *back = toml_parse(toml, strlen(toml), err, sizeof err);
	ck_assert_msg(back != NULL && json_same(j, back), "%s", err);
	cJSON_Delete(back);
	free(toml);
	cJSON_Delete(j);
	free(s);
}
END_TEST

static Suite *toml_suite(void)
{
	Suite *s = suite_create("lib_toml");
	TCase *tc = tcase_create("tables");
	tcase_add_loop_test(tc, test_parse_table, 0,
			    (int)(sizeof parse_cases / sizeof parse_cases[0]));
	tcase_add_loop_test(tc, test_float_table, 0,
			    (int)(sizeof float_cases / sizeof float_cases[0]));
	tcase_add_loop_test(tc, test_roundtrip_table, 0,
			    (int)(sizeof roundtrip_cases / sizeof roundtrip_cases[0]));
	tcase_add_loop_test(tc, test_encode_table, 0,
			    (int)(sizeof encode_cases / sizeof encode_cases[0]));
	tcase_add_loop_test(tc, test_encode_err_table, 0,
			    (int)(sizeof encode_err_cases / sizeof encode_err_cases[0]));
	suite_add_tcase(s, tc);
	TCase *single = tcase_create("single");
	tcase_set_timeout(single, 30);
	tcase_add_test(single, test_depth_limit);
	tcase_add_test(single, test_length_not_nul);
	tcase_add_test(single, test_encode_nonfinite);
	tcase_add_test(single, test_many_keys);
	suite_add_tcase(s, single);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(toml_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
