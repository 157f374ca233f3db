/* Check suite for policyd_msg.c (the Message object) and policyd_hdr.c
 * (header fields, decoding, folding).  The header functions are tables of
 * (input, expected).  The Message cases each load a policy whose
 * smtp_server_data handler runs a snippet of Lua on a message file written
 * to a temporary directory, send the event with a {"__msg":...} argument
 * through policy_handle, and compare the whole reply (JSON; a string "~x"
 * matches any string containing x). */
#include "policyd/policyd.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void setup(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/policyd-msg-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static void write_bytes(const char *name, const char *data, size_t len)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	fclose(f);
}

static struct policy *load_ok(const char *src)
{
	char path[256], err[1024];
	write_bytes("policy.lua", src, strlen(src));
	snprintf(path, sizeof path, "%s/policy.lua", tmpdir);
	struct policy *p = policy_load(path, err, sizeof err);
	ck_assert_msg(policy_load_error(p) == NULL, "load failed: %s", err);
	return p;
}

/* expected JSON vs actual; "~x" strings match by substring */
static bool match(const cJSON *want, const cJSON *got)
{
	if (cJSON_IsString(want) && want->valuestring[0] == '~')
		return cJSON_IsString(got) && strstr(got->valuestring, want->valuestring + 1);
	if (cJSON_IsObject(want)) {
		if (!cJSON_IsObject(got) || cJSON_GetArraySize(want) != cJSON_GetArraySize(got))
			return false;
		for (const cJSON *w = want->child; w; w = w->next)
			if (!match(w, cJSON_GetObjectItemCaseSensitive(got, w->string)))
				return false;
		return true;
	}
	if (cJSON_IsArray(want)) {
		if (!cJSON_IsArray(got) || cJSON_GetArraySize(want) != cJSON_GetArraySize(got))
			return false;
		for (const cJSON *w = want->child, *g = got->child; w; w = w->next, g = g->next)
			if (!match(w, g))
				return false;
		return true;
	}
	return got && cJSON_Compare(want, got, 1);
}

/* Sends request (JSON text) and checks the reply against want (JSON text)
 * and that the Lua stack is balanced. */
static void expect(struct policy *p, const char *request, const char *want)
{
	cJSON *req = cJSON_Parse(request);
	ck_assert_msg(req != NULL, "bad request JSON: %s", request);
	cJSON *w = cJSON_Parse(want);
	ck_assert_msg(w != NULL, "bad expected JSON: %s", want);
	int top = lua_gettop(p->L);
	cJSON *reply = policy_handle(p, req);
	ck_assert_ptr_nonnull(reply);
	ck_assert_int_eq(lua_gettop(p->L), top);
	char *text = cJSON_PrintUnformatted(reply);
	ck_assert_msg(match(w, reply), "request %s\n  got  %s\n  want %s", request, text, want);
	free(text);
	cJSON_Delete(reply);
	cJSON_Delete(req);
	cJSON_Delete(w);
}

/* --- policyd_hdr.c: values --- */

static const struct {
	const char *raw;
	const char *want;
} values[] = {
	{ "hello", "hello" },
	{ "", "" },
	{ "  a\r\n\tb  ", "a b" },
	{ "a,\r\n b,\r\n\t\tc", "a, b, c" },
	{ "one   two\t three", "one two three" },
	{ "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße" },
	{ "=?utf-8?b?R3LDvMOfZQ==?=", "Grüße" },
	{ "=?UTF-8?Q?a_b?=", "a b" },
	/* whitespace between encoded words goes, around text it stays */
	{ "=?ISO-8859-1?Q?caf=E9?= =?utf-8?B?w6k=?= end", "caféé end" },
	{ "=?UTF-8?Q?caf=C3=A9?=\r\n =?UTF-8?Q?_au_lait?=", "café au lait" },
	{ "a =?UTF-8?Q?b?= c", "a b c" },
	{ "=?UTF-8*en?Q?hi?=", "hi" },
	/* undecodable encoded words are kept as written */
	{ "=?x-no-such-charset?Q?abc?=", "=?x-no-such-charset?Q?abc?=" },
	{ "=?UTF-8?Q?bad=Z?=", "=?UTF-8?Q?bad=Z?=" },
	{ "=?UTF-8?X?abc?=", "=?UTF-8?X?abc?=" },
	{ "=?UTF-8?B?!!!?=", "=?UTF-8?B?!!!?=" },
	{ "=?UTF-8?Q?no end", "=?UTF-8?Q?no end" },
	{ "x=?y", "x=?y" },
};

START_TEST(test_hdr_value)
{
	struct policy_buf out = { 0 };
	policy_hdr_value(values[_i].raw, strlen(values[_i].raw), &out);
	ck_assert_str_eq(out.p, values[_i].want);
	ck_assert_uint_eq(out.len, strlen(values[_i].want));
	policy_buf_free(&out);
}
END_TEST

/* --- policyd_hdr.c: encode=true --- */

#define W10 "word01 word02 word03 word04 word05 word06 word07 word08 word09 word10"
#define W20 "word11 word12 word13 word14 word15 word16 word17 word18 word19 word20"
#define E3 "=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9"

static const struct {
	const char *value;
	const char *want;
} encodings[] = {
	{ "foo", "foo" },
	{ "", "" },
	{ "  hi \t there\r\n ", "hi there" },
	{ W10 " " W20, W10 "\r\n\t" W20 },
	{ "Grüße aus Köln", "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus =?UTF-8?Q?K=C3=B6ln?=" },
	/* a run of 8-bit words is one encoded text, its space inside */
	{ "é é x", "=?UTF-8?Q?=C3=A9_=C3=A9?= x" },
	{ "a=b?c é", "a=b?c =?UTF-8?Q?=C3=A9?=" },
	{ "ééééééééééééééééééééééééééééééé",
	  "=?UTF-8?Q?" E3 "?=\r\n\t=?UTF-8?Q?" E3 "?=\r\n\t=?UTF-8?Q?" E3 "?=\r\n\t"
	  "=?UTF-8?Q?=C3=A9?=" },
};

START_TEST(test_hdr_encode)
{
	struct policy_buf out = { 0 }, back = { 0 };
	const char *v = encodings[_i].value;
	policy_hdr_encode(v, strlen(v), &out);
	ck_assert_str_eq(out.p, encodings[_i].want);
	/* no line over 75 after its fold's tab, and decoding gives the words back */
	for (const char *l = out.p;;) {
		const char *e = strstr(l, "\r\n");
		ck_assert_uint_le(e ? (size_t)(e - l) : strlen(l), 76);
		if (!e)
			break;
		l = e + 2;
	}
	policy_hdr_value(out.p, out.len, &back);
	struct policy_buf norm = { 0 };
	policy_hdr_value(v, strlen(v), &norm);
	ck_assert_str_eq(back.p, norm.p);
	policy_buf_free(&out);
	policy_buf_free(&back);
	policy_buf_free(&norm);
}
END_TEST

/* A word longer than 900 bytes is cut there, as KumoMTA's wrap. */
START_TEST(test_hdr_encode_hard_wrap)
{
	char word[1001];
	memset(word, 'x', 1000);
	word[1000] = '\0';
	struct policy_buf out = { 0 };
	policy_hdr_encode(word, 1000, &out);
	ck_assert_uint_eq(out.len, 1003);
	ck_assert(memcmp(out.p + 900, "\r\n\t", 3) == 0);
	ck_assert_ptr_null(memchr(out.p, '\r', 900));
	policy_buf_free(&out);
}
END_TEST

/* --- policyd_hdr.c: fields and the block end --- */

static const struct {
	const char *block;
	const char *names;  /* the fields found, comma-separated */
} blocks[] = {
	{ "A: 1\r\nB: 2\r\n", "A,B" },
	{ "A: 1\r\n  folded\r\nbad line\r\n\tstray fold\r\nB : 2\r\nC:3\r\n\r\nD: 4\r\n", "A,B,C" },
	{ " lead: x\r\n\tmore\r\nE: 5\r\n", "E" },
	{ "X Y: 1\r\nZ: 2\r\n", "Z" },
	{ "A: 1\nB: 2\n\nC: 3\n", "A,B" },
	{ "A: no final line end", "A" },
	{ "", "" },
	{ "\r\nA: 1\r\n", "" },
	{ ": empty name\r\nF: 6\r\n", "F" },
};

START_TEST(test_hdr_fields)
{
	const char *b = blocks[_i].block;
	size_t pos = 0;
	struct policy_hdr_field f;
	char names[200] = "";
	while (policy_hdr_next(b, strlen(b), &pos, &f)) {
		ck_assert_uint_le(f.value, f.value_end);
		ck_assert_uint_le(f.value_end, f.end);
		if (names[0])
			strcat(names, ",");
		strncat(names, b + f.start, f.name_len);
	}
	ck_assert_str_eq(names, blocks[_i].names);
	ck_assert_uint_eq(pos, strlen(b));
}
END_TEST

static const struct {
	const char *data;
	long long want;
} ends[] = {
	{ "", -1 },
	{ "\r\n", 0 },
	{ "\r\nbody", 0 },
	{ "A: 1\r\n\r\nb", 6 },
	{ "A: 1\r\nB: 2\r\n\r\n", 12 },
	{ "A: 1\r\nB: 2\r\n", -1 },
	{ "A: 1\n\nb", -1 },
};

START_TEST(test_hdr_block_end)
{
	ck_assert_int_eq(policy_hdr_block_end(ends[_i].data, strlen(ends[_i].data)), ends[_i].want);
}
END_TEST

/* --- the Message object --- */

/* The message most cases use, raw and as a JSON string body. */
#define R_BLOCK "Subject: hello\r\n" \
		"X-Campaign-ID: 12345\r\n" \
		"To: a@example.com,\r\n\tb@example.com\r\n" \
		"x-mailer: foo\r\n  bar\r\n" \
		"Received: from a\r\n" \
		"Received: from b\r\n"
#define R_BODY "\r\nBody line\r\n"
#define J_SUBJ "Subject: hello\\r\\n"
#define J_XCAMP "X-Campaign-ID: 12345\\r\\n"
#define J_TO "To: a@example.com,\\r\\n\\tb@example.com\\r\\n"
#define J_XMAILER "x-mailer: foo\\r\\n  bar\\r\\n"
#define J_RECV "Received: from a\\r\\nReceived: from b\\r\\n"
#define J_BLOCK J_SUBJ J_XCAMP J_TO J_XMAILER J_RECV
#define J_BODY "\\r\\nBody line\\r\\n"

#define MSG R_BLOCK R_BODY
#define ENC_MSG "X-Enc: =?ISO-8859-1?Q?caf=E9?= =?utf-8?B?w6k=?= end\r\n" \
		"From :Someone\r\n" \
		"Subject: =?x-unknown?Q?abc?=\r\n" \
		"\r\nbody\r\n"
#define NOBLANK "Subject: x\r\nX-A: 1\r\n"

#define ID "0123456789abcdef0123456789abcdef"
#define ENV "\"sender\":\"s@example.com\",\"recipients\":[\"r@example.com\"]"
#define META_IN "\"meta\":{\"x_in\":1}"
#define PLAIN ENV "," META_IN
/* the connection metadata is not in the replies: the handlers do not change it */
#define OK(ret, msg) "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":" ret \
	",\"msg\":{" msg "}}"
#define OK2(ret, ret2, msg) "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":" ret \
	",\"ret2\":" ret2 ",\"msg\":{" msg "}}"
#define ERR(e) "{\"id\":1,\"ok\":true,\"result\":\"error\",\"error\":\"~" e "\"}"

enum { HDR_AUTO = -2 };

static const struct msg_case {
	const char *lua;    /* body of smtp_server_data(msg, meta) */
	const char *data;   /* the message file; NULL: there is no file */
	size_t len;         /* bytes of data; 0: strlen */
	size_t file_len;    /* bytes actually written; 0: all (less: a short file) */
	int hdr_end;        /* HDR_AUTO: found as smtpd does (50 without a file) */
	const char *rcpts;  /* JSON array; NULL: ["r@example.com"] */
	const char *want;   /* the whole reply */
} cases[] = {
	/* 0: prepend_header and the envelope need no bytes: the file is absent */
	{ "msg:prepend_header('X-A', '1')\n msg:set_meta('x_k', 'v')\n"
	  " msg:set_sender('new@example.com')\n msg:set_recipient('n@example.net')\n"
	  " msg:prepend_header('X-B', 2)",
	  NULL, 0, 0, HDR_AUTO, NULL,
	  OK("null", "\"sender\":\"new@example.com\",\"recipients\":[\"n@example.net\"],"
	     "\"meta\":{\"x_in\":1,\"x_k\":\"v\"},\"prefix\":\"X-B: 2\\r\\nX-A: 1\\r\\n\"") },
	/* 1-2: reading an absent file is a Lua error naming it */
	{ "return msg:get_data()", NULL, 0, 0, HDR_AUTO, NULL,
	  ERR("/missing.eml: No such file or directory") },
	{ "msg:prepend_header('X-A', '1')\n return msg:get_first_named_header_value('x')",
	  NULL, 0, 0, HDR_AUTO, NULL, ERR("message data /tmp/policyd-msg-") },
	/* 3-4: lookups read only [0, hdr_end): a file cut there still serves
	 * them, while get_data finds it short */
	{ "return msg:get_first_named_header_value('subject')", MSG, 0, sizeof R_BLOCK - 1,
	  HDR_AUTO, NULL, OK("\"hello\"", PLAIN) },
	{ "return msg:get_data()", MSG, 0, sizeof R_BLOCK - 1, HDR_AUTO, NULL,
	  ERR("/short.eml: the file ends at byte 132 of 145") },
	/* 5-11: lookups: case-insensitive, unfolded, decoded */
	{ "return msg:get_first_named_header_value('TO')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("\"a@example.com, b@example.com\"", PLAIN) },
	{ "return msg:get_first_named_header_value('X-Mailer')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("\"foo bar\"", PLAIN) },
	{ "return msg:get_first_named_header_value('Nope')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN) },
	{ "return msg:get_all_named_header_values('received')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("[\"from a\",\"from b\"]", PLAIN) },
	{ "return #msg:get_all_named_header_values('nope')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("0", PLAIN) },
	{ "return msg:get_all_headers()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("[[\"Subject\",\"hello\"],[\"X-Campaign-ID\",\"12345\"],"
	     "[\"To\",\"a@example.com, b@example.com\"],[\"x-mailer\",\"foo bar\"],"
	     "[\"Received\",\"from a\"],[\"Received\",\"from b\"]]", PLAIN) },
	{ "return { msg:get_first_named_header_value('x-enc'),\n"
	  " msg:get_first_named_header_value('from'), msg:get_first_named_header_value('subject') }",
	  ENC_MSG, 0, 0, HDR_AUTO, NULL,
	  OK("[\"caféé end\",\"Someone\",\"=?x-unknown?Q?abc?=\"]", PLAIN) },
	/* 12-15: header edits come back as "headers" (and "prefix") */
	{ "msg:append_header('X-New', 'v')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"headers\":\"" J_BLOCK "X-New: v\\r\\n\"") },
	{ "msg:prepend_header('X-P', '1')\n msg:append_header('X-Q', '2')\n"
	  " return msg:get_data(), msg:get_first_named_header_value('x-p')",
	  MSG, 0, 0, HDR_AUTO, NULL,
	  OK2("\"X-P: 1\\r\\n" J_BLOCK "X-Q: 2\\r\\n" J_BODY "\"", "\"1\"",
	      PLAIN ",\"prefix\":\"X-P: 1\\r\\n\",\"headers\":\"" J_BLOCK "X-Q: 2\\r\\n\"") },
	{ "msg:remove_all_named_headers('RECEIVED')\n return msg:get_data()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("\"" J_SUBJ J_XCAMP J_TO J_XMAILER J_BODY "\"",
	     PLAIN ",\"headers\":\"" J_SUBJ J_XCAMP J_TO J_XMAILER "\"") },
	{ "msg:prepend_header('X-P', '1')\n msg:remove_all_named_headers('x-p')", MSG, 0, 0,
	  HDR_AUTO, NULL, OK("null", PLAIN) },
	/* 16-17: remove_x_headers */
	{ "msg:remove_x_headers()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"headers\":\"" J_SUBJ J_TO J_RECV "\"") },
	{ "msg:remove_x_headers { 'X-MAILER', 'subject' }", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"headers\":\"" J_XCAMP J_TO J_RECV "\"") },
	/* 18-19: import_x_headers fills the meta, the bytes stay */
	{ "msg:import_x_headers()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", ENV ",\"meta\":{\"x_in\":1,\"x_campaign_id\":\"12345\",\"x_mailer\":\"foo bar\"}") },
	{ "msg:import_x_headers { 'x-campaign-id', 'Subject' }", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", ENV ",\"meta\":{\"x_in\":1,\"subject\":\"hello\",\"x_campaign_id\":\"12345\"}") },
	/* 20-22: set_data replaces everything; header methods then work on it */
	{ "msg:prepend_header('X-P', '1')\n msg:append_header('X-Q', '2')\n"
	  " msg:set_data('Subject: new\\r\\n\\r\\nbody\\r\\n')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"data\":\"Subject: new\\r\\n\\r\\nbody\\r\\n\"") },
	{ "msg:set_data('A: 1\\r\\n\\r\\nb\\r\\n')\n msg:append_header('B', '2')\n"
	  " msg:prepend_header('C', '3')\n"
	  " return msg:get_first_named_header_value('b'), msg:get_data()",
	  NULL, 0, 0, HDR_AUTO, NULL,
	  OK2("\"2\"", "\"C: 3\\r\\nA: 1\\r\\nB: 2\\r\\n\\r\\nb\\r\\n\"",
	      PLAIN ",\"data\":\"C: 3\\r\\nA: 1\\r\\nB: 2\\r\\n\\r\\nb\\r\\n\"") },
	{ "msg:set_data('no blank line\\r\\n')\n msg:append_header('B', '2')", NULL, 0, 0,
	  HDR_AUTO, NULL, ERR("append_header could not find the end of the header block") },
	/* 23-25: hdr_end -1: lookups see every line, append_header fails,
	 * removals come back as data (headers could not say where they end) */
	{ "msg:append_header('X-B', '2')", NOBLANK, 0, 0, HDR_AUTO, NULL,
	  ERR("policy.lua:2: append_header could not find the end of the header block") },
	{ "return msg:get_first_named_header_value('x-a')", NOBLANK, 0, 0, HDR_AUTO, NULL,
	  OK("\"1\"", PLAIN) },
	{ "msg:prepend_header('P', '0')\n msg:remove_all_named_headers('x-a')", NOBLANK, 0, 0,
	  HDR_AUTO, NULL, OK("null", PLAIN ",\"data\":\"P: 0\\r\\nSubject: x\\r\\n\"") },
	/* 26-27: a message starting with the blank line (hdr_end 0) */
	{ "msg:append_header('X-A', '1')\n return msg:get_data()", "\r\nbody\r\n", 0, 0,
	  HDR_AUTO, NULL,
	  OK("\"X-A: 1\\r\\n\\r\\nbody\\r\\n\"", PLAIN ",\"headers\":\"X-A: 1\\r\\n\"") },
	{ "return msg:get_all_headers()", "\r\nX-Not: header\r\n", 0, 0, HDR_AUTO, NULL,
	  OK("{}", PLAIN) },
	/* 28-33: recipients */
	{ "local r = msg:recipient()\n return tostring(r), r.domain", MSG, 0, 0, HDR_AUTO, NULL,
	  OK2("\"r@example.com\"", "\"example.com\"", PLAIN) },
	{ "local r = msg:recipient()\n return #r, r[2].email", MSG, 0, 0, HDR_AUTO,
	  "[\"a@x.example\",\"b@y.example\"]",
	  OK2("2", "\"b@y.example\"",
	      "\"sender\":\"s@example.com\",\"recipients\":[\"a@x.example\",\"b@y.example\"]," META_IN) },
	{ "return msg:recipient() == nil, #msg:recipient_list()", MSG, 0, 0, HDR_AUTO, "[]",
	  OK2("true", "0", "\"sender\":\"s@example.com\",\"recipients\":[]," META_IN) },
	{ "return msg:recipient_list()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("[\"r@example.com\"]", PLAIN) },
	{ "msg:set_recipient { 'x@a.example', msg:sender(), 'POSTMASTER' }", MSG, 0, 0, HDR_AUTO,
	  NULL, OK("null", "\"sender\":\"s@example.com\","
		   "\"recipients\":[\"x@a.example\",\"s@example.com\",\"Postmaster\"]," META_IN) },
	{ "msg:set_recipient(msg:sender())", NULL, 0, 0, HDR_AUTO, NULL,
	  OK("null", "\"sender\":\"s@example.com\",\"recipients\":[\"s@example.com\"]," META_IN) },
	/* 34-37: bad recipients and senders */
	{ "msg:set_recipient { 'ok@a.example', 'not an address' }", MSG, 0, 0, HDR_AUTO, NULL,
	  ERR("set_recipient: recipient 2: invalid address 'not an address'") },
	{ "msg:set_recipient {}", MSG, 0, 0, HDR_AUTO, NULL,
	  ERR("set_recipient: empty recipient list") },
	{ "msg:set_recipient(42)", MSG, 0, 0, HDR_AUTO, NULL,
	  ERR("set_recipient: expected a string or an EnvelopeAddress, got number") },
	{ "msg:set_sender('@@')", MSG, 0, 0, HDR_AUTO, NULL, ERR("set_sender: invalid address '@@'") },
	/* 38-40: sender */
	{ "msg:set_sender(msg:recipient())\n return msg:sender().email", NULL, 0, 0, HDR_AUTO, NULL,
	  OK("\"r@example.com\"", "\"sender\":\"r@example.com\",\"recipients\":[\"r@example.com\"],"
	     META_IN) },
	{ "msg:set_sender('')\n local s = msg:sender()\n return { s.email, s.user, s.domain }",
	  NULL, 0, 0, HDR_AUTO, NULL,
	  OK("[\"\",\"\",\"\"]", "\"sender\":\"\",\"recipients\":[\"r@example.com\"]," META_IN) },
	{ "return msg:id(), tostring(msg)", NULL, 0, 0, HDR_AUTO, NULL,
	  OK2("\"" ID "\"", "\"Message(" ID ")\"", PLAIN) },
	/* 41-43: meta */
	{ "return msg:get_meta('x_in'), msg:get_meta('none')", NULL, 0, 0, HDR_AUTO, NULL,
	  OK2("1", "null", PLAIN) },
	{ "msg:set_meta('x_in', nil)\n msg:set_meta('t', { a = { 1, 2 } })", NULL, 0, 0,
	  HDR_AUTO, NULL,
	  OK("null", ENV ",\"meta\":{\"x_in\":null,\"t\":{\"a\":[1,2]}}") },
	{ "msg:set_meta('f', print)", NULL, 0, 0, HDR_AUTO, NULL,
	  ERR("set_meta 'f': cannot serialize function") },
	/* 44-47: encode=true; a value ending in CRLF gets no second one */
	{ "msg:prepend_header('Subject', '" W10 " " W20 "', true)", NULL, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"prefix\":\"Subject: " W10 "\\r\\n\\t" W20 "\\r\\n\"") },
	{ "msg:prepend_header('Subject', 'Grüße aus Köln', true)\n"
	  " return msg:get_first_named_header_value('subject')", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("\"Grüße aus Köln\"", PLAIN ",\"prefix\":\"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus "
	     "=?UTF-8?Q?K=C3=B6ln?=\\r\\n\"") },
	{ "msg:append_header('X-U', 'Grüße', true)\n msg:append_header('X-R', 'Grüße')", MSG, 0, 0,
	  HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"headers\":\"" J_BLOCK "X-U: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\\r\\n"
	     "X-R: Grüße\\r\\n\"") },
	{ "msg:prepend_header('X-A', '1\\r\\n')", NULL, 0, 0, HDR_AUTO, NULL,
	  OK("null", PLAIN ",\"prefix\":\"X-A: 1\\r\\n\"") },
	/* 48-51: refused arguments */
	{ "msg:prepend_header('Bad Name', 'x')", NULL, 0, 0, HDR_AUTO, NULL,
	  ERR("prepend_header: invalid header name 'Bad Name'") },
	{ "msg:append_header('X:Y', 'x')", MSG, 0, 0, HDR_AUTO, NULL,
	  ERR("append_header: invalid header name 'X:Y'") },
	{ "msg:set_data('a\\0b')", NULL, 0, 0, HDR_AUTO, NULL,
	  ERR("set_data: the data contains a NUL byte") },
	{ "msg:import_x_headers('X-A')", MSG, 0, 0, HDR_AUTO, NULL,
	  ERR("import_x_headers: expected a list of header names") },
	/* 52: a header block with a NUL cannot go back in JSON */
	{ "msg:append_header('X-B', '2')", "X-A: a\0b\r\n\r\nbody\r\n", 18, 0, HDR_AUTO, NULL,
	  ERR("smtp_server_data: message " ID ": the edited header block contains a NUL byte") },
	/* 53-54: a reject still returns the message; an error does not */
	{ "msg:set_meta('x_r', 1)\n msg:prepend_header('X-A', '1')\n kumo.reject(550, 'no')",
	  NULL, 0, 0, HDR_AUTO, NULL,
	  "{\"id\":1,\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"no\","
	  "\"mode\":\"If421\",\"msg\":{" ENV ",\"meta\":{\"x_in\":1,\"x_r\":1},"
	  "\"prefix\":\"X-A: 1\\r\\n\"}}" },
	{ "msg:set_meta('x_r', 1)\n error('boom')", NULL, 0, 0, HDR_AUTO, NULL,
	  "{\"id\":1,\"ok\":true,\"result\":\"error\",\"error\":\"~policy.lua:3: boom\"}" },
	/* 55-56: get_data reflects edits in order; a Message is not JSON */
	{ "msg:prepend_header('X-A', '1')\n return msg:get_data()", MSG, 0, 0, HDR_AUTO, NULL,
	  OK("\"X-A: 1\\r\\n" J_BLOCK J_BODY "\"", PLAIN ",\"prefix\":\"X-A: 1\\r\\n\"") },
	{ "return msg", NULL, 0, 0, HDR_AUTO, NULL,
	  ERR("smtp_server_data: return value: cannot serialize userdata") },
};

static char *msg_request(const struct msg_case *mc)
{
	size_t len = mc->data ? (mc->len ? mc->len : strlen(mc->data)) : 100;
	long long hdr_end = mc->hdr_end;
	if (hdr_end == HDR_AUTO) {
		hdr_end = mc->data ? -1 : 50;
		if (mc->data && len >= 2 && memcmp(mc->data, "\r\n", 2) == 0)
			hdr_end = 0;
		else if (mc->data)
			for (size_t i = 0; i + 3 < len; i++)
				if (memcmp(mc->data + i, "\r\n\r\n", 4) == 0) {
					hdr_end = (long long)i + 2;
					break;
				}
	}
	const char *file = !mc->data ? "missing.eml" : mc->file_len ? "short.eml" : "m.eml";
	if (mc->data)
		write_bytes(file, mc->data, mc->file_len ? mc->file_len : len);
	char *req = NULL;
	if (asprintf(&req, "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\","
		     "\"args\":[{\"__msg\":{\"id\":\"" ID "\",\"sender\":\"s@example.com\","
		     "\"recipients\":%s,\"meta\":{\"x_in\":1},\"path\":\"%s/%s\","
		     "\"size\":%zu,\"hdr_end\":%lld}}],\"meta_pos\":1,\"meta\":{}}",
		     mc->rcpts ? mc->rcpts : "[\"r@example.com\"]", tmpdir, file, len, hdr_end) < 0)
		abort();
	return req;
}

START_TEST(test_msg)
{
	const struct msg_case *mc = &cases[_i];
	char *src = NULL;
	if (asprintf(&src, "kumo.on('smtp_server_data', function(msg, meta)\n %s\nend)\n",
		     mc->lua) < 0)
		abort();
	struct policy *p = load_ok(src);
	char *req = msg_request(mc);
	expect(p, req, mc->want);
	/* the Message is detached and collected: nothing leaks or dangles */
	lua_gc(p->L, LUA_GCCOLLECT, 0);
	free(req);
	free(src);
	policy_free(p);
}
END_TEST

/* A Message kept past its event raises an error instead of touching freed
 * memory, and can still be printed and collected. */
START_TEST(test_msg_kept)
{
	struct policy *p = load_ok(
		"kumo.on('smtp_server_data', function(msg) KEPT = msg msg:set_meta('x', 1) end)\n"
		"kumo.on('x_use', function(what)\n"
		"  if what == 'str' then return tostring(KEPT) end\n"
		"  if what == 'data' then return KEPT:get_data() end\n"
		"  if what == 'drop' then KEPT = nil collectgarbage() return 'gone' end\n"
		"  return KEPT:id()\n"
		"end)\n");
	write_bytes("m.eml", MSG, strlen(MSG));
	char req[600];
	snprintf(req, sizeof req,
		 "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\","
		 "\"args\":[{\"__msg\":{\"id\":\"" ID "\",\"sender\":\"s@example.com\","
		 "\"recipients\":[\"r@example.com\"],\"meta\":{},\"path\":\"%s/m.eml\","
		 "\"size\":%zu,\"hdr_end\":%zu}}]}",
		 tmpdir, strlen(MSG), sizeof R_BLOCK - 1);
	expect(p, req, "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
	       ",\"meta\":{\"x\":1}}}");
	expect(p, "{\"id\":2,\"op\":\"event\",\"event\":\"x_use\",\"args\":[\"id\"]}",
	       "{\"id\":2,\"ok\":true,\"result\":\"error\","
	       "\"error\":\"~message used after its event returned\"}");
	expect(p, "{\"id\":3,\"op\":\"event\",\"event\":\"x_use\",\"args\":[\"data\"]}",
	       "{\"id\":3,\"ok\":true,\"result\":\"error\","
	       "\"error\":\"~message used after its event returned\"}");
	expect(p, "{\"id\":4,\"op\":\"event\",\"event\":\"x_use\",\"args\":[\"str\"]}",
	       "{\"id\":4,\"ok\":true,\"result\":\"ok\",\"ret\":\"Message(detached)\"}");
	expect(p, "{\"id\":5,\"op\":\"event\",\"event\":\"x_use\",\"args\":[\"drop\"]}",
	       "{\"id\":5,\"ok\":true,\"result\":\"ok\",\"ret\":\"gone\"}");
	/* a second message in the same state works as the first */
	expect(p, req, "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
	       ",\"meta\":{\"x\":1}}}");
	policy_free(p);
}
END_TEST

/* Invalid message references are bad requests. */
#define MSG_ARG(fields) "{\"id\":9,\"op\":\"event\",\"event\":\"smtp_server_data\"," \
	"\"args\":[{\"__msg\":" fields "}]}"
#define GOOD "\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":[],\"path\":\"/x\""
#define BAD(e) "{\"id\":9,\"ok\":false,\"error\":\"~bad request: args[0]: " e "\"}"

static const struct {
	const char *request;
	const char *want;
} bad_requests[] = {
	{ MSG_ARG("\"x\""), BAD("__msg must be an object") },
	{ MSG_ARG("{\"sender\":\"\",\"recipients\":[],\"path\":\"/x\",\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: missing id") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"recipients\":[],\"path\":\"/x\",\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: missing sender") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"no way\",\"recipients\":[],\"path\":\"/x\","
		  "\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: invalid sender 'no way'") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":\"a@b\",\"path\":\"/x\","
		  "\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: recipients must be an array") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":[1],\"path\":\"/x\","
		  "\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: recipients must be strings") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":[\"x\"],\"path\":\"/x\","
		  "\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: invalid recipient 'x'") },
	{ MSG_ARG("{" GOOD ",\"meta\":[],\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: meta must be an object") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":[],\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: missing path") },
	{ MSG_ARG("{\"id\":\"" ID "\",\"sender\":\"\",\"recipients\":[],\"fetch\":false,"
		  "\"size\":1,\"hdr_end\":0}"),
	  BAD("__msg: missing path") },
	{ MSG_ARG("{" GOOD ",\"size\":-1,\"hdr_end\":0}"), BAD("__msg: size must be") },
	{ MSG_ARG("{" GOOD ",\"size\":1.5,\"hdr_end\":0}"), BAD("__msg: size must be") },
	{ MSG_ARG("{" GOOD ",\"hdr_end\":0}"), BAD("__msg: size must be") },
	{ MSG_ARG("{" GOOD ",\"size\":10,\"hdr_end\":11}"),
	  BAD("__msg: hdr_end must be a whole number from -1 to size") },
	{ MSG_ARG("{" GOOD ",\"size\":10,\"hdr_end\":-2}"), BAD("__msg: hdr_end must be") },
	{ MSG_ARG("{" GOOD ",\"size\":10}"), BAD("__msg: hdr_end must be") },
	{ "{\"id\":9,\"op\":\"event\",\"event\":\"smtp_server_data\",\"args\":["
	  "{\"__msg\":{" GOOD ",\"size\":1,\"hdr_end\":0}},{\"__msg\":{" GOOD ",\"size\":1,\"hdr_end\":0}}]}",
	  "{\"id\":9,\"ok\":false,\"error\":\"bad request: args[1]: a second message argument\"}" },
};

START_TEST(test_bad_request)
{
	struct policy *p = load_ok("kumo.on('smtp_server_data', function(msg) end)\n");
	expect(p, bad_requests[_i].request, bad_requests[_i].want);
	policy_free(p);
}
END_TEST

/* Many events in one state, the meta argument absent: nothing accumulates. */
START_TEST(test_msg_in_sequence)
{
	struct policy *p = load_ok(
		"kumo.on('smtp_server_data', function(msg)\n"
		"  msg:append_header('X-N', msg:get_first_named_header_value('subject'))\n"
		"end)\n");
	write_bytes("m.eml", MSG, strlen(MSG));
	char req[600];
	snprintf(req, sizeof req,
		 "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\","
		 "\"args\":[{\"__msg\":{\"id\":\"" ID "\",\"sender\":\"s@example.com\","
		 "\"recipients\":[\"r@example.com\"],\"path\":\"%s/m.eml\","
		 "\"size\":%zu,\"hdr_end\":%zu}}]}",
		 tmpdir, strlen(MSG), sizeof R_BLOCK - 1);
	for (int i = 0; i < 200; i++)
		expect(p, req, "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
		       ",\"meta\":{},\"headers\":\"" J_BLOCK "X-N: hello\\r\\n\"}}");
	ck_assert_int_eq(lua_gettop(p->L), 0);
	policy_free(p);
}
END_TEST

/* A message passed with "fetch" (no path): the policy's fetch hook is
 * asked for the file only when a method needs the bytes, once per event;
 * its failure is the handler's error. */
static int fetch_calls;
static const char *fetch_mode; /* "ok", "fail" */

static char *test_fetch(void *arg, char *err, size_t errlen)
{
	(void)arg;
	fetch_calls++;
	if (strcmp(fetch_mode, "fail") == 0) {
		snprintf(err, errlen, "smtpd: disk full");
		return NULL;
	}
	char *path = NULL;
	if (asprintf(&path, "%s/m.eml", tmpdir) < 0)
		abort();
	return path;
}

static const struct {
	const char *lua;
	const char *mode;
	int calls;       /* fetches expected */
	const char *want;
} fetches[] = {
	/* envelope and meta only: the file is never asked for */
	{ "msg:set_meta('x', msg:sender().email)", "ok", 0,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
	  ",\"meta\":{\"x\":\"s@example.com\"}}}" },
	{ "msg:prepend_header('X-A', '1')", "ok", 0,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
	  ",\"meta\":{},\"prefix\":\"X-A: 1\\r\\n\"}}" },
	/* headers, then the whole message: one fetch */
	{ "return msg:get_first_named_header_value('subject') .. #msg:get_data()", "ok", 1,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":\"~hello\",\"msg\":{" ENV
	  ",\"meta\":{}}}" },
	{ "msg:get_data() return msg:get_data():sub(1, 8)", "ok", 1,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":\"Subject:\",\"msg\":{" ENV
	  ",\"meta\":{}}}" },
	/* set_data first: the received bytes are never needed */
	{ "msg:set_data('A: b\\r\\n\\r\\nx') return msg:get_data()", "ok", 0,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":\"A: b\\r\\n\\r\\nx\",\"msg\":{" ENV
	  ",\"meta\":{},\"data\":\"A: b\\r\\n\\r\\nx\"}}" },
	/* smtpd could not write it: the handler fails, so the event does */
	{ "return msg:get_data()", "fail", 1,
	  "{\"id\":1,\"ok\":true,\"result\":\"error\","
	  "\"error\":\"~message data: smtpd: disk full\"}" },
	{ "local ok, e = pcall(msg.get_data, msg) return tostring(ok) .. ' ' .. e", "fail", 1,
	  "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":\"~false \",\"msg\":{" ENV
	  ",\"meta\":{}}}" },
};

START_TEST(test_msg_fetch)
{
	char *src = NULL;
	if (asprintf(&src, "kumo.on('smtp_server_data', function(msg, meta)\n %s\nend)\n",
		     fetches[_i].lua) < 0)
		abort();
	struct policy *p = load_ok(src);
	write_bytes("m.eml", MSG, strlen(MSG));
	char req[600];
	snprintf(req, sizeof req,
		 "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\","
		 "\"args\":[{\"__msg\":{\"id\":\"" ID "\",\"sender\":\"s@example.com\","
		 "\"recipients\":[\"r@example.com\"],\"fetch\":true,"
		 "\"size\":%zu,\"hdr_end\":%zu}}]}",
		 strlen(MSG), sizeof R_BLOCK - 1);
	p->fetch = test_fetch;
	fetch_mode = fetches[_i].mode;
	fetch_calls = 0;
	expect(p, req, fetches[_i].want);
	ck_assert_int_eq(fetch_calls, fetches[_i].calls);
	/* without a fetch hook (a state that cannot reach smtpd), reading fails */
	p->fetch = NULL;
	if (fetches[_i].calls > 0 && strcmp(fetches[_i].mode, "ok") == 0)
		expect(p, req, "{\"id\":1,\"ok\":true,\"result\":\"error\","
		       "\"error\":\"~message data: the bytes cannot be fetched here\"}");
	free(src);
	policy_free(p);
}
END_TEST

/* "then" (lib/ipc.h): smtp_server_message_received sent along with
 * smtp_server_data runs right after it, on the message as data left it,
 * but only when data returned ok and changed nothing of the message but
 * its meta; the connection metadata flows from one to the next. */
static const char then_policy[] =
	"kumo.on('smtp_server_data', function(msg, meta)\n"
	"  local how = msg:get_meta('how')\n"
	"  meta:set_meta('c_data', 1)\n"
	"  msg:set_meta('m_data', how)\n"
	"  if how == 'reject' then kumo.reject(550, '5.7.1 no') end\n"
	"  if how == 'error' then error('boom') end\n"
	"  if how == 'rcpt' then msg:set_recipient('n@example.net') end\n"
	"  if how == 'sender' then msg:set_sender('n@example.net') end\n"
	"  if how == 'hdr' then msg:prepend_header('X-A', '1') end\n"
	"  if how == 'body' then msg:set_data('A: b\\r\\n\\r\\nx') end\n"
	"  if how == 'read' then return msg:get_first_named_header_value('subject') end\n"
	"end)\n"
	"kumo.on('smtp_server_message_received', function(msg, meta)\n"
	"  msg:set_meta('m_rcvd', { msg:id(), msg:get_meta('m_data'), meta:get_meta('c_data'),\n"
	"                           msg:get_first_named_header_value('subject') })\n"
	"  meta:set_meta('c_rcvd', 2)\n"
	"end)\n";

#define ID2 "fedcba9876543210fedcba9876543210"

static const struct {
	const char *how;
	const char *then_env;   /* the continued message's envelope */
	const char *want;       /* the whole reply, after the id */
} thens[] = {
	/* ok: both ran; the second saw data's meta and its own id and prefix */
	{ "ok", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"ok\",\"m_data\":\"ok\"}},"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1,\"c_rcvd\":2},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"ok\",\"m_data\":\"ok\","
	  "\"m_rcvd\":[\"" ID2 "\",\"ok\",1,\"hello\"]},\"prefix\":\"Received: x\\r\\n\"}}" },
	/* reading the bytes changes nothing */
	{ "read", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":\"hello\",\"meta\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"read\",\"m_data\":\"read\"}},"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1,\"c_rcvd\":2},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"read\",\"m_data\":\"read\","
	  "\"m_rcvd\":[\"" ID2 "\",\"read\",1,\"hello\"]},\"prefix\":\"Received: x\\r\\n\"}}" },
	/* not after a reject or an error */
	{ "reject", ENV,
	  "\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"5.7.1 no\",\"mode\":\"If421\","
	  "\"meta\":{\"c_data\":1},\"msg\":{" ENV ",\"meta\":{\"how\":\"reject\",\"m_data\":\"reject\"}}" },
	{ "error", ENV, "\"ok\":true,\"result\":\"error\",\"error\":\"~boom\"" },
	/* not when data changed the message: smtpd sends it itself */
	{ "rcpt", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{\"sender\":\"s@example.com\",\"recipients\":[\"n@example.net\"],"
	  "\"meta\":{\"how\":\"rcpt\",\"m_data\":\"rcpt\"}}" },
	{ "sender", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{\"sender\":\"n@example.net\",\"recipients\":[\"r@example.com\"],"
	  "\"meta\":{\"how\":\"sender\",\"m_data\":\"sender\"}}" },
	{ "hdr", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"hdr\",\"m_data\":\"hdr\"},\"prefix\":\"X-A: 1\\r\\n\"}" },
	{ "body", ENV,
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"body\",\"m_data\":\"body\"},"
	  "\"data\":\"A: b\\r\\n\\r\\nx\"}" },
	/* nor when it was sent for another envelope */
	{ "ok", "\"sender\":\"s@example.com\",\"recipients\":[\"r@example.com\",\"q@example.com\"]",
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta\":{\"how\":\"ok\",\"m_data\":\"ok\"}}" },
};

/* Sends smtp_server_data for a message of the "how" kind, with
 * smtp_server_message_received (envelope then_env) as its "then", and
 * checks the whole reply after the id.  Without delta the message carries
 * its meta {"how":...}; with delta the connection metadata does, and the
 * message's is a copy of it ("meta_from_conn"). */
static void expect_then(bool delta, const char *how, const char *then_env, const char *want_tail)
{
	struct policy *p = load_ok(then_policy);
	write_bytes("m.eml", MSG, strlen(MSG));
	char how_meta[64], *req = NULL, *want = NULL;
	snprintf(how_meta, sizeof how_meta, "\"how\":\"%s\"", how);
	if (asprintf(&req, "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\",%s"
		     "\"args\":[{\"__msg\":{\"id\":\"" ID "\"," ENV ",%s%s%s"
		     "\"path\":\"%s/m.eml\",\"size\":%zu,\"hdr_end\":%zu}}],\"meta_pos\":1,"
		     "\"meta\":{%s},"
		     "\"then\":{\"event\":\"smtp_server_message_received\",\"meta_pos\":1,"
		     "\"args\":[{\"__msg\":{\"id\":\"" ID2 "\",%s,\"fetch\":true,"
		     "\"prefix\":\"Received: x\\r\\n\",\"size\":%zu,\"hdr_end\":%zu}}]}}",
		     delta ? "\"delta\":true," : "",
		     delta ? "\"meta_from_conn\":true," : "\"meta\":{", delta ? "" : how_meta,
		     delta ? "" : "},", tmpdir, strlen(MSG), sizeof R_BLOCK - 1,
		     delta ? how_meta : "", then_env, strlen(MSG), sizeof R_BLOCK - 1) < 0 ||
	    asprintf(&want, "{\"id\":1,%s}", want_tail) < 0)
		abort();
	p->fetch = test_fetch;
	fetch_mode = "ok";
	expect(p, req, want);
	free(req);
	free(want);
	policy_free(p);
}

START_TEST(test_then)
{
	expect_then(false, thens[_i].how, thens[_i].then_env, thens[_i].want);
}
END_TEST

/* A continued event without a handler (a reload removed it) says so. */
START_TEST(test_then_nohandler)
{
	struct policy *p = load_ok("kumo.on('smtp_server_data', function(msg) end)\n");
	char req[800];
	snprintf(req, sizeof req,
		 "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_data\","
		 "\"args\":[{\"__msg\":{\"id\":\"" ID "\"," ENV ",\"path\":\"/x\",\"size\":1,"
		 "\"hdr_end\":0}}],\"then\":{\"event\":\"smtp_server_message_received\","
		 "\"args\":[{\"__msg\":{\"id\":\"" ID2 "\"," ENV ",\"path\":\"/x\",\"size\":1,"
		 "\"hdr_end\":0}}]}}");
	expect(p, req, "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,\"msg\":{" ENV
	       ",\"meta\":{}},\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,"
	       "\"nohandler\":true}}");
	policy_free(p);
}
END_TEST

/* With "delta" (lib/ipc.h) the replies carry what the handlers set
 * ("meta_set"), not whole metadata objects, and a prefix only when the
 * handler changed it; "meta_from_conn" makes the message's metadata a copy
 * of the connection metadata sent with it. */
static const struct {
	const char *how;
	const char *want;       /* the whole reply, after the id */
} delta_thens[] = {
	{ "ok",
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta_set\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta_set\":{\"m_data\":\"ok\"}},"
	  "\"then\":{\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta_set\":{\"c_rcvd\":2},"
	  "\"msg\":{" ENV ",\"meta_set\":{\"m_rcvd\":[\"" ID2 "\",\"ok\",1,\"hello\"]}}}" },
	{ "hdr",
	  "\"ok\":true,\"result\":\"ok\",\"ret\":null,\"meta_set\":{\"c_data\":1},"
	  "\"msg\":{" ENV ",\"meta_set\":{\"m_data\":\"hdr\"},\"prefix\":\"X-A: 1\\r\\n\"}" },
	{ "reject",
	  "\"ok\":true,\"result\":\"reject\",\"code\":550,\"text\":\"5.7.1 no\",\"mode\":\"If421\","
	  "\"meta_set\":{\"c_data\":1},\"msg\":{" ENV ",\"meta_set\":{\"m_data\":\"reject\"}}" },
};

START_TEST(test_then_delta)
{
	expect_then(true, delta_thens[_i].how, ENV, delta_thens[_i].want);
}
END_TEST

/* A handler that removes every line of the prefix it was sent says so
 * with an empty one, with or without "delta" (smtpd keeps its own prefix
 * when the reply has none). */
START_TEST(test_prefix_removed)
{
	struct policy *p = load_ok(
		"kumo.on('smtp_server_message_received', function(msg)\n"
		"  msg:remove_all_named_headers('X-Pre')\n"
		"end)\n");
	write_bytes("m.eml", MSG, strlen(MSG));
	for (int delta = 0; delta <= 1; delta++) {
		char req[800];
		snprintf(req, sizeof req,
			 "{\"id\":1,\"op\":\"event\",\"event\":\"smtp_server_message_received\",%s"
			 "\"args\":[{\"__msg\":{\"id\":\"" ID "\"," ENV ",\"meta\":{},"
			 "\"path\":\"%s/m.eml\",\"size\":%zu,\"hdr_end\":%zu,"
			 "\"prefix\":\"X-Pre: x\\r\\n\"}}]}",
			 delta ? "\"delta\":true," : "", tmpdir, strlen(MSG), sizeof R_BLOCK - 1);
		expect(p, req, delta ? "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,"
				       "\"msg\":{" ENV ",\"prefix\":\"\"}}"
				     : "{\"id\":1,\"ok\":true,\"result\":\"ok\",\"ret\":null,"
				       "\"msg\":{" ENV ",\"meta\":{},\"prefix\":\"\"}}");
	}
	policy_free(p);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("policyd_msg");
	TCase *hdr = tcase_create("hdr");
	tcase_add_loop_test(hdr, test_hdr_value, 0, sizeof values / sizeof values[0]);
	tcase_add_loop_test(hdr, test_hdr_encode, 0, sizeof encodings / sizeof encodings[0]);
	tcase_add_test(hdr, test_hdr_encode_hard_wrap);
	tcase_add_loop_test(hdr, test_hdr_fields, 0, sizeof blocks / sizeof blocks[0]);
	tcase_add_loop_test(hdr, test_hdr_block_end, 0, sizeof ends / sizeof ends[0]);
	suite_add_tcase(s, hdr);

	TCase *tc = tcase_create("msg");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_msg, 0, sizeof cases / sizeof cases[0]);
	tcase_add_test(tc, test_msg_kept);
	tcase_add_loop_test(tc, test_bad_request, 0, sizeof bad_requests / sizeof bad_requests[0]);
	tcase_add_test(tc, test_msg_in_sequence);
	tcase_add_loop_test(tc, test_msg_fetch, 0, sizeof fetches / sizeof fetches[0]);
	tcase_add_loop_test(tc, test_then, 0, sizeof thens / sizeof thens[0]);
	tcase_add_loop_test(tc, test_then_delta, 0, sizeof delta_thens / sizeof delta_thens[0]);
	tcase_add_test(tc, test_prefix_removed);
	tcase_add_test(tc, test_then_nohandler);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
