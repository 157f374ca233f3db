/* smtpd_parse: the SMTP command-line parser (pure, no I/O).
 * Entry point: smtp_cmd_parse(line without CRLF) -> verb and arguments, or
 * a parse_status naming the reply class.  Verbs are case-insensitive;
 * whitespace is not trimmed ("QUIT " is a syntax error, as in KumoMTA). */
#include "smtpd/smtpd.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		if (c < 0x80) {
			if (c == 0)
				return false;
			i++;
			continue;
		}
		size_t n;
		unsigned min;
		unsigned cp;
		if ((c & 0xe0) == 0xc0) {
			n = 1; cp = c & 0x1f; min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2; cp = c & 0x0f; min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3; cp = c & 0x07; min = 0x10000;
		} else {
			return false;
		}
		for (size_t k = 1; k <= n; k++) {
			if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

struct verb_name {
	const char *name;
	enum verb verb;
};

static const struct verb_name verbs[] = {
	{ "EHLO", V_EHLO }, { "HELO", V_HELO }, { "MAIL", V_MAIL }, { "RCPT", V_RCPT },
	{ "DATA", V_DATA }, { "RSET", V_RSET }, { "NOOP", V_NOOP }, { "QUIT", V_QUIT },
	{ "STARTTLS", V_STARTTLS }, { "AUTH", V_AUTH }, { "XCLIENT", V_XCLIENT },
};

void smtp_cmd_free(struct smtp_cmd *cmd)
{
	addr_free(&cmd->addr);
}

/* EHLO/HELO argument: a domain or an address literal. */
static bool valid_helo_arg(const char *a, size_t n)
{
	if (n == 0)
		return false;
	if (a[0] == '[') {
		struct smtp_addr tmp;
		char path[300], err[64];
		size_t used;
		if (n > 260)
			return false;
		int len = snprintf(path, sizeof path, "<x@%.*s>", (int)n, a);
		int rc = addr_parse_path(path, (size_t)len, ADDR_REQUIRE_BRACKETS, &tmp, &used, err, sizeof err);
		if (rc == 0)
			addr_free(&tmp);
		return rc == 0 && used == (size_t)len;
	}
	return addr_valid_domain(a, n);
}

/* Parses " KEY[=VALUE]" parameters after a MAIL/RCPT path. */
static enum parse_status parse_esmtp_params(const char *p, const char *end, struct smtp_cmd *cmd,
					    bool is_mail)
{
	while (p < end) {
		if (*p != ' ') {
			snprintf(cmd->diag, sizeof cmd->diag, "expected a space before a parameter");
			return PARSE_SYNTAX;
		}
		while (p < end && *p == ' ')
			p++;
		if (p == end)
			break;
		const char *kw = p;
		while (p < end && (isalnum((unsigned char)*p) || *p == '-'))
			p++;
		size_t kwlen = (size_t)(p - kw);
		if (kwlen == 0 || !isalnum((unsigned char)kw[0])) {
			snprintf(cmd->diag, sizeof cmd->diag, "bad ESMTP parameter");
			return PARSE_SYNTAX;
		}
		const char *val = NULL;
		size_t vlen = 0;
		if (p < end && *p == '=') {
			val = ++p;
			while (p < end && *p != ' ' && *p != '=' && (unsigned char)*p > 0x20)
				p++;
			vlen = (size_t)(p - val);
			if (vlen == 0 || (p < end && *p != ' ')) {
				snprintf(cmd->diag, sizeof cmd->diag, "bad ESMTP parameter value");
				return PARSE_SYNTAX;
			}
		}
		if (is_mail && kwlen == 4 && strncasecmp(kw, "SIZE", 4) == 0) {
			char num[24];
			if (!val || vlen > 20) {
				snprintf(cmd->diag, sizeof cmd->diag, "SIZE needs a number");
				return PARSE_BAD_PARAM;
			}
			memcpy(num, val, vlen);
			num[vlen] = '\0';
			for (size_t i = 0; i < vlen; i++) {
				if (!isdigit((unsigned char)num[i])) {
					snprintf(cmd->diag, sizeof cmd->diag, "SIZE needs a number");
					return PARSE_BAD_PARAM;
				}
			}
			cmd->has_size = true;
			cmd->size = strtoull(num, NULL, 10);
		}
		/* BODY=, SMTPUTF8, NOTIFY=, ... are accepted and ignored, as in KumoMTA */
	}
	return PARSE_OK;
}

static enum parse_status parse_path_cmd(const char *line, size_t len, const char *prefix,
					struct smtp_cmd *cmd)
{
	size_t pl = strlen(prefix);
	bool is_mail = cmd->verb == V_MAIL;
	if (len < pl || strncasecmp(line, prefix, pl) != 0)
		return PARSE_SYNTAX;
	const char *p = line + pl, *end = line + len;
	if (p < end && *p == ' ')
		p++; /* "MAIL FROM: <a@b>" is accepted (KumoMTA PR #559) */
	if (p == end || *p != '<')
		return is_mail ? PARSE_BAD_SENDER : PARSE_BAD_RCPT;
	char err[128];
	size_t used = 0;
	int flags = ADDR_REQUIRE_BRACKETS | (is_mail ? ADDR_ALLOW_NULL : ADDR_ALLOW_POSTMASTER);
	if (addr_parse_path(p, (size_t)(end - p), flags, &cmd->addr, &used, err, sizeof err) != 0) {
		snprintf(cmd->diag, sizeof cmd->diag, "%s", err);
		return is_mail ? PARSE_BAD_SENDER : PARSE_BAD_RCPT;
	}
	p += used;
	enum parse_status st = parse_esmtp_params(p, end, cmd, is_mail);
	if (st != PARSE_OK)
		addr_free(&cmd->addr);
	return st;
}

enum parse_status smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd)
{
	memset(cmd, 0, sizeof *cmd);
	if (!utf8_valid(line, len))
		return PARSE_BAD_UTF8;
	if (len == 0) {
		snprintf(cmd->diag, sizeof cmd->diag, "expected a command verb, got an empty line");
		return PARSE_SYNTAX_DIAG;
	}
	size_t vlen = 0;
	while (vlen < len && line[vlen] != ' ')
		vlen++;
	cmd->verb = V_OTHER;
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
		if (strlen(verbs[i].name) == vlen && strncasecmp(line, verbs[i].name, vlen) == 0) {
			cmd->verb = verbs[i].verb;
			break;
		}
	}
	if (cmd->verb == V_OTHER) {
		bool word = vlen > 0;
		for (size_t i = 0; i < vlen; i++)
			word &= isalpha((unsigned char)line[i]) != 0;
		if (!word) {
			snprintf(cmd->diag, sizeof cmd->diag, "expected a command verb");
			return PARSE_SYNTAX_DIAG;
		}
		return PARSE_UNKNOWN;
	}
	cmd->arg = vlen < len ? line + vlen + 1 : line + len;
	cmd->arglen = vlen < len ? len - vlen - 1 : 0;
	bool has_sp = vlen < len;

	switch (cmd->verb) {
	case V_EHLO:
	case V_HELO:
		if (!has_sp || !valid_helo_arg(cmd->arg, cmd->arglen))
			return PARSE_SYNTAX;
		return PARSE_OK;
	case V_MAIL:
		return parse_path_cmd(line, len, "MAIL FROM:", cmd);
	case V_RCPT:
		return parse_path_cmd(line, len, "RCPT TO:", cmd);
	case V_NOOP:
		return PARSE_OK; /* NOOP [SP String] */
	case V_DATA:
	case V_RSET:
	case V_QUIT:
	case V_STARTTLS:
		return has_sp ? PARSE_SYNTAX : PARSE_OK;
	case V_AUTH:
	case V_XCLIENT:
		return has_sp && cmd->arglen > 0 ? PARSE_OK : PARSE_SYNTAX;
	default:
		return PARSE_UNKNOWN;
	}
}
