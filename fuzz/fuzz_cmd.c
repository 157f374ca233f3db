/* fuzz_cmd: libFuzzer target for the SMTP command parser (smtpd_parse.c).
 * Any byte string is one command line; the parser must not crash, and a
 * parsed MAIL/RCPT address must re-parse as an email. */
#include "smtpd/smtpd.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_cmd cmd;
	enum parse_status st = smtp_cmd_parse((const char *)data, size, &cmd);
	if (st == PARSE_OK && (cmd.verb == V_MAIL || cmd.verb == V_RCPT)) {
		struct smtp_addr again;
		char err[128];
		if (addr_parse_email(cmd.addr.email, &again, err, sizeof err) != 0)
			abort();
		addr_free(&again);
	}
	smtp_cmd_free(&cmd);
	return 0;
}
