/* Check suite for lib/frame.c, three tables:
 *  - decode: raw bytes -> frame_decode's return, bytes used, the document
 *    and what decoding the rest gives; each row is also read through an
 *    evbuffer with frame_read, which must agree;
 *  - round trip: documents through frame_encode, then fed back to frame_read
 *    one byte at a time (0 until the last byte, then the same document);
 *  - fd: what one end of a socketpair sends (a document, raw bytes, a close)
 *    -> what frame_recv_fd on the other end returns, timeouts included. */
#include "lib/frame.h"

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>

/* true when text parses to a document equal to doc */
static bool same_doc(const cJSON *doc, const char *text)
{
	cJSON *want = cJSON_Parse(text);
	ck_assert_msg(want != NULL, "bad expected JSON in the table: %s", text);
	bool eq = cJSON_Compare(want, doc, 1);
	cJSON_Delete(want);
	return eq;
}

struct decode_case {
	const char *name;
	const char *buf;
	size_t len;
	int rc;
	size_t used;            /* rc 1 */
	const char *json;       /* rc 1 */
	int next_rc;            /* rc 1: frame_decode on the bytes after the frame */
	const char *next_json;  /* next_rc 1 */
	const char *why;        /* rc -1: error substring */
};

#define RAW(lit) lit, sizeof(lit) - 1
#define MORE(name, lit) { name, RAW(lit), 0, 0, NULL, 0, NULL, NULL }
#define BAD(name, lit, why) { name, RAW(lit), -1, 0, NULL, 0, NULL, why }
#define ONE(name, lit, used, json, nrc, njson) { name, RAW(lit), 1, used, json, nrc, njson, NULL }

static const struct decode_case decode_cases[] = {
	MORE("empty", ""),
	MORE("partial header", "\0\0\0"),
	MORE("header only", "\0\0\0\x07"),
	MORE("partial body", "\0\0\0\x07" "{\"a\":"),
	MORE("largest length, no body yet", "\x04\0\0\0" "{"),
	BAD("zero length", "\0\0\0\0", "bad frame length 0"),
	BAD("oversize length", "\x04\0\0\x01", "bad frame length 67108865"),
	BAD("all-ones length", "\xff\xff\xff\xff" "{}", "bad frame length"),
	BAD("not JSON", "\0\0\0\x03" "abc", "not valid JSON"),
	BAD("truncated JSON", "\0\0\0\x05" "{\"a\":", "not valid JSON"),
	BAD("array", "\0\0\0\x03" "[1]", "not a JSON object"),
	BAD("string", "\0\0\0\x02" "\"\"", "not a JSON object"),
	BAD("number", "\0\0\0\x01" "7", "not a JSON object"),
	BAD("null", "\0\0\0\x04" "null", "not a JSON object"),
	/* the fuzzer's find: cJSON takes any byte below 0x21, NUL included, for
	 * white space, and keeps duplicate keys */
	BAD("NUL as white space", "\0\0\0\x13" "{\"op\":1,\"op\":\x01\0\0\0" "5}", "control byte 0x01"),
	BAD("control byte in a string", "\0\0\0\x08" "{\"a\":\"\x07\"}", "control byte 0x07"),
	BAD("duplicate key", "\0\0\0\x0f" "{\"op\":1,\"op\":5}", "twice"),
	BAD("nested duplicate key", "\0\0\0\x15" "{\"m\":[{\"k\":1,\"k\":2}]}", "twice"),
	/* found by fuzz_frame: 9E3230 parses to infinity, printed back as null */
	BAD("number out of range", "\0\0\0\x13" "{\"id\":1,\"o\":9E3230}", "out of range"),
	BAD("nested number out of range", "\0\0\0\x0e" "{\"a\":[-1e999]}", "out of range"),
	ONE("same key in two objects", "\0\0\0\x19" "{\"a\":{\"k\":1},\"b\":{\"k\":1}}", 29,
	    "{\"a\":{\"k\":1},\"b\":{\"k\":1}}", 0, NULL),
	ONE("tab and newlines are white space", "\0\0\0\x05" "{\t\r\n}", 9, "{}", 0, NULL),
	ONE("object", "\0\0\0\x07" "{\"a\":1}", 11, "{\"a\":1}", 0, NULL),
	ONE("empty object", "\0\0\0\x02" "{}", 6, "{}", 0, NULL),
	ONE("spaces around", "\0\0\0\x05" " { } ", 9, "{}", 0, NULL),
	ONE("two frames", "\0\0\0\x02" "{}" "\0\0\0\x07" "{\"b\":2}", 6, "{}", 1, "{\"b\":2}"),
	ONE("frame, then part of one", "\0\0\0\x02" "{}" "\0\0\0\x07" "{\"b\"", 6, "{}", 0, NULL),
	ONE("frame, then a bad one", "\0\0\0\x02" "{}" "\0\0\0\0", 6, "{}", -1, NULL),
};

START_TEST(test_frame_decode)
{
	const struct decode_case *c = &decode_cases[_i];
	cJSON *doc = (cJSON *)1;
	size_t used = 0;
	char err[128] = "";
	int rc = frame_decode((const uint8_t *)c->buf, c->len, &doc, &used, err, sizeof err);
	ck_assert_msg(rc == c->rc, "%s: frame_decode gave %d (%s)", c->name, rc, err);
	if (rc == -1)
		ck_assert_msg(strstr(err, c->why) != NULL, "%s: error \"%s\" lacks \"%s\"", c->name,
			      err, c->why);
	if (rc != 1) {
		ck_assert_ptr_null(doc);
	} else {
		ck_assert_uint_eq(used, c->used);
		ck_assert_msg(same_doc(doc, c->json), "%s: wrong document", c->name);
		cJSON_Delete(doc);
		cJSON *next = NULL;
		size_t used2 = 0;
		int rc2 = frame_decode((const uint8_t *)c->buf + used, c->len - used, &next, &used2,
				       err, sizeof err);
		ck_assert_msg(rc2 == c->next_rc, "%s: next frame gave %d", c->name, rc2);
		if (rc2 == 1) {
			ck_assert_uint_eq(used + used2, c->len);
			ck_assert(same_doc(next, c->next_json));
			cJSON_Delete(next);
		}
	}

	/* the same bytes through an evbuffer */
	struct evbuffer *in = evbuffer_new();
	evbuffer_add(in, c->buf, c->len);
	err[0] = '\0';
	rc = frame_read(in, &doc, err, sizeof err);
	ck_assert_msg(rc == c->rc, "%s: frame_read gave %d (%s)", c->name, rc, err);
	if (rc == -1)
		ck_assert(strstr(err, c->why) != NULL);
	if (rc == 0)
		ck_assert_uint_eq(evbuffer_get_length(in), c->len); /* nothing taken */
	if (rc == 1) {
		ck_assert_uint_eq(evbuffer_get_length(in), c->len - c->used);
		ck_assert(same_doc(doc, c->json));
		cJSON_Delete(doc);
		rc = frame_read(in, &doc, err, sizeof err);
		ck_assert_int_eq(rc, c->next_rc);
		if (rc == 1) {
			ck_assert(same_doc(doc, c->next_json));
			ck_assert_uint_eq(evbuffer_get_length(in), 0);
			cJSON_Delete(doc);
		}
	}
	evbuffer_free(in);
}
END_TEST

/* The control-byte scan reads eight bytes at a time: every byte below 0x20
 * but tab, CR and LF is refused at each position of a frame (the first
 * word, a later one, the tail after the last whole word), next to bytes
 * of 0x80 and above; tab, CR and LF pass the scan, and between members
 * they are white space. */
START_TEST(test_frame_control_byte_anywhere)
{
	/* {"s":"<body>"}: 6 + body + 2 bytes of JSON */
	enum { BODY = 29 };
	for (int pos = 0; pos < BODY; pos++) {
		for (int b = 0; b < 0x20; b++) {
			uint8_t buf[4 + 8 + BODY];
			size_t n = 8 + BODY;
			buf[0] = buf[1] = buf[2] = 0;
			buf[3] = (uint8_t)n;
			memcpy(buf + 4, "{\"s\":\"", 6);
			for (int k = 0; k < BODY; k++)
				buf[10 + k] = k % 3 ? 'a' + k % 26 : 0xc3 + k % 2; /* some high bytes */
			buf[10 + pos] = (uint8_t)b;
			memcpy(buf + 10 + BODY, "\"}", 2);
			cJSON *doc = NULL;
			size_t used = 0;
			char err[128] = "";
			int rc = frame_decode(buf, sizeof buf, &doc, &used, err, sizeof err);
			if (b == '\t' || b == '\n' || b == '\r') {
				/* not the scan's to refuse (what cJSON makes of it in a
				 * string is its own) */
				ck_assert_msg(rc == 1 || strstr(err, "control byte") == NULL, "0x%02x at %d: %s",
					      b, pos, err);
			} else {
				ck_assert_msg(rc == -1 && strstr(err, "control byte") != NULL,
					      "byte 0x%02x at %d: rc %d (%s)", b, pos, rc, err);
			}
			cJSON_Delete(doc);
			doc = NULL;
			/* the same byte between members, after pos spaces, where white
			 * space may be */
			uint8_t fb[4 + 64];
			size_t tn = 0;
			memcpy(fb + 4, "{\"a\":1,", 7);
			tn = 7;
			memset(fb + 4 + tn, ' ', (size_t)pos);
			tn += (size_t)pos;
			fb[4 + tn++] = (uint8_t)b;
			memcpy(fb + 4 + tn, "\"b\":2}", 6);
			tn += 6;
			fb[0] = fb[1] = fb[2] = 0;
			fb[3] = (uint8_t)tn;
			rc = frame_decode(fb, 4 + tn, &doc, &used, err, sizeof err);
			bool ws = b == '\t' || b == '\n' || b == '\r';
			ck_assert_msg(rc == (ws ? 1 : -1), "0x%02x between members after %d spaces: rc %d %s",
				      b, pos, rc, err);
			if (!ws)
				ck_assert(strstr(err, "control byte") != NULL);
			cJSON_Delete(doc);
			doc = NULL;
		}
	}
}
END_TEST

/* Duplicate keys are found by hash up to 64 keys and pair by pair above;
 * keys that collide in nothing but their hash are not duplicates. */
START_TEST(test_frame_duplicate_keys_many)
{
	static const int counts[] = { 2, 3, 63, 64, 65, 200 };
	for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
		int n = counts[ci];
		for (int dup = -1; dup < n; dup += n / 3 + 1) {
			/* keys k0..k(n-1); with dup >= 0 the last key repeats k<dup> */
			size_t cap = 16 + (size_t)n * 16;
			char *text = malloc(cap);
			ck_assert_ptr_nonnull(text);
			size_t len = 0;
			text[len++] = '{';
			for (int k = 0; k < n; k++) {
				int key = (k == n - 1 && dup >= 0 && dup != k) ? dup : k;
				len += (size_t)snprintf(text + len, cap - len, "%s\"k%d\":%d", k ? "," : "", key, k);
			}
			text[len++] = '}';
			uint8_t *buf = malloc(4 + len);
			ck_assert_ptr_nonnull(buf);
			buf[0] = (uint8_t)(len >> 24);
			buf[1] = (uint8_t)(len >> 16);
			buf[2] = (uint8_t)(len >> 8);
			buf[3] = (uint8_t)len;
			memcpy(buf + 4, text, len);
			cJSON *doc = NULL;
			size_t used = 0;
			char err[128] = "";
			int rc = frame_decode(buf, 4 + len, &doc, &used, err, sizeof err);
			bool twice = dup >= 0 && dup != n - 1;
			ck_assert_msg(rc == (twice ? -1 : 1), "%d keys, dup %d: rc %d (%s)", n, dup, rc, err);
			if (twice)
				ck_assert(strstr(err, "twice") != NULL);
			cJSON_Delete(doc);
			free(buf);
			free(text);
		}
	}
}
END_TEST

struct trip_case {
	const char *json;
	size_t pad;   /* adds a string member "pad" of this many bytes */
};

static const struct trip_case trip_cases[] = {
	{ "{}", 0 },
	{ "{\"id\":1}", 0 },
	{ "{\"id\":42,\"op\":\"rcpt\",\"args\":[1,2.5,{\"x\":null}],\"ok\":true}", 0 },
	{ "{\"s\":\"caf\\u00e9 \\\"q\\\" \\\\ \\n\"}", 0 },
	{ "{\"u\":\"\xc3\xa9\xe4\xbe\x8b\"}", 0 },
	{ "{\"id\":7}", 300 },          /* length needs two bytes */
	{ "{\"id\":8}", 70000 },        /* three */
	{ "{\"id\":9}", 1u << 24 },     /* four */
};

START_TEST(test_frame_round_trip)
{
	const struct trip_case *c = &trip_cases[_i];
	cJSON *doc = cJSON_Parse(c->json);
	ck_assert_ptr_nonnull(doc);
	if (c->pad) {
		char *pad = malloc(c->pad + 1);
		ck_assert_ptr_nonnull(pad);
		memset(pad, 'x', c->pad);
		pad[c->pad] = '\0';
		cJSON_AddStringToObject(doc, "pad", pad);
		free(pad);
	}
	char *text = cJSON_PrintUnformatted(doc);
	size_t n = strlen(text);
	free(text);

	struct evbuffer *out = evbuffer_new();
	ck_assert_int_eq(frame_encode(out, doc), 0);
	ck_assert_uint_eq(evbuffer_get_length(out), 4 + n);
	uint8_t hdr[4];
	evbuffer_copyout(out, hdr, 4);
	ck_assert_uint_eq((size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3], n);

	/* back in, a byte at a time for small frames, in 4 KiB pieces for big
	 * ones; nothing comes out before the last piece */
	struct evbuffer *in = evbuffer_new();
	size_t step = n > 100000 ? 4096 : 1;
	cJSON *got = NULL;
	char err[128] = "";
	int rc = 0;
	while (evbuffer_get_length(out) > 0) {
		ck_assert_int_eq(rc, 0);
		ck_assert_int_eq(evbuffer_remove_buffer(out, in, step) > 0, 1);
		rc = frame_read(in, &got, err, sizeof err);
	}
	ck_assert_msg(rc == 1, "frame_read gave %d (%s)", rc, err);
	ck_assert(cJSON_Compare(doc, got, 1));
	ck_assert_uint_eq(evbuffer_get_length(in), 0);
	cJSON_Delete(got);
	cJSON_Delete(doc);
	evbuffer_free(in);
	evbuffer_free(out);
}
END_TEST

enum fd_mode {
	SEND,            /* frame_send_fd(doc), then raw bytes, then maybe close */
	SEND_TO_CLOSED,  /* the reading end is closed first: frame_send_fd fails */
};

struct fd_case {
	const char *name;
	enum fd_mode mode;
	const char *doc;        /* NULL: none */
	const char *raw;        /* bytes written after it */
	size_t rawlen;
	bool close;             /* close the sending end afterwards */
	int timeout_ms;
	int rc;
	const char *json;       /* rc 0 */
	const char *why;        /* rc -1 */
};

#define NORAW NULL, 0

static const struct fd_case fd_cases[] = {
	{ "document", SEND, "{\"id\":1,\"op\":\"hello\"}", NORAW, false, 1000, 0,
	  "{\"id\":1,\"op\":\"hello\"}", NULL },
	{ "document, no timeout", SEND, "{\"id\":2}", NORAW, false, -1, 0, "{\"id\":2}", NULL },
	{ "document, then close", SEND, "{\"id\":3}", NORAW, true, 1000, 0, "{\"id\":3}", NULL },
	{ "document, then more", SEND, "{\"id\":4}", RAW("\0\0\0\x02" "{}"), false, 1000, 0,
	  "{\"id\":4}", NULL },
	{ "raw frame", SEND, NULL, RAW("\0\0\0\x07" "{\"a\":1}"), false, 1000, 0, "{\"a\":1}", NULL },
	{ "nothing: timeout", SEND, NULL, NORAW, false, 100, -1, NULL, "timed out" },
	{ "partial header: timeout", SEND, NULL, RAW("\0\0"), false, 100, -1, NULL, "timed out" },
	{ "partial body: timeout", SEND, NULL, RAW("\0\0\0\x05" "{"), false, 100, -1, NULL,
	  "timed out" },
	{ "closed", SEND, NULL, NORAW, true, 1000, -1, NULL, "connection closed" },
	{ "closed mid-header", SEND, NULL, RAW("\0\0"), true, 1000, -1, NULL, "connection closed" },
	{ "closed mid-body", SEND, NULL, RAW("\0\0\0\x05" "{"), true, 1000, -1, NULL,
	  "connection closed" },
	{ "zero length", SEND, NULL, RAW("\0\0\0\0"), false, 1000, -1, NULL, "bad frame length" },
	{ "oversize length", SEND, NULL, RAW("\xff\xff\xff\xff"), false, 1000, -1, NULL,
	  "bad frame length" },
	{ "not JSON", SEND, NULL, RAW("\0\0\0\x03" "abc"), false, 1000, -1, NULL, "not valid JSON" },
	{ "not an object", SEND, NULL, RAW("\0\0\0\x03" "[1]"), false, 1000, -1, NULL,
	  "not a JSON object" },
	{ "send to a closed peer", SEND_TO_CLOSED, "{\"id\":5}", NORAW, false, 0, -1, NULL,
	  "write" },
};

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(test_frame_fd)
{
	const struct fd_case *c = &fd_cases[_i];
	int sv[2];
	char err[128] = "";
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);

	if (c->mode == SEND_TO_CLOSED) {
		close(sv[1]);
		cJSON *doc = cJSON_Parse(c->doc);
		int rc = frame_send_fd(sv[0], doc, err, sizeof err);
		cJSON_Delete(doc);
		close(sv[0]);
		ck_assert_int_eq(rc, c->rc);
		ck_assert_msg(strstr(err, c->why) != NULL, "%s: error \"%s\"", c->name, err);
		return;
	}

	if (c->doc) {
		cJSON *doc = cJSON_Parse(c->doc);
		ck_assert_ptr_nonnull(doc);
		ck_assert_int_eq(frame_send_fd(sv[0], doc, err, sizeof err), 0);
		cJSON_Delete(doc);
	}
	if (c->raw)
		ck_assert_int_eq(write(sv[0], c->raw, c->rawlen), (ssize_t)c->rawlen);
	if (c->close)
		close(sv[0]);

	cJSON *got = (cJSON *)1;
	long long start = now_ms();
	int rc = frame_recv_fd(sv[1], &got, c->timeout_ms, err, sizeof err);
	long long took = now_ms() - start;
	ck_assert_msg(rc == c->rc, "%s: frame_recv_fd gave %d (%s)", c->name, rc, err);
	if (rc == 0) {
		ck_assert(same_doc(got, c->json));
		cJSON_Delete(got);
	} else {
		ck_assert_ptr_null(got);
		ck_assert_msg(strstr(err, c->why) != NULL, "%s: error \"%s\" lacks \"%s\"", c->name,
			      err, c->why);
	}
	if (strcmp(c->why ? c->why : "", "timed out") == 0)
		ck_assert_msg(took >= c->timeout_ms - 1 && took < c->timeout_ms + 2000,
			      "%s: took %lld ms", c->name, took);
	if (!c->close)
		close(sv[0]);
	close(sv[1]);
}
END_TEST

static Suite *frame_suite(void)
{
	Suite *s = suite_create("lib_frame");
	TCase *tc = tcase_create("tables");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_frame_decode, 0,
			    (int)(sizeof decode_cases / sizeof decode_cases[0]));
	tcase_add_loop_test(tc, test_frame_round_trip, 0,
			    (int)(sizeof trip_cases / sizeof trip_cases[0]));
	tcase_add_loop_test(tc, test_frame_fd, 0, (int)(sizeof fd_cases / sizeof fd_cases[0]));
	tcase_add_test(tc, test_frame_control_byte_anywhere);
	tcase_add_test(tc, test_frame_duplicate_keys_many);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN); /* a write to a closed peer must fail, not kill */
	SRunner *sr = srunner_create(frame_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
