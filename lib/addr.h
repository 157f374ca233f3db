/* SMTP envelope address parsing (RFC 5321 4.1.2, RFC 6531 for SMTPUTF8).
 *
 * Path      = "<" [ A-d-l ":" ] Mailbox ">"      (source route accepted, dropped)
 * Mailbox   = Local-part "@" ( Domain / address-literal )
 * Local-part= Dot-string / Quoted-string          (UTF-8 allowed in both)
 * Domain    = sub-domain *("." sub-domain)         (letters/digits/hyphen, UTF-8 labels)
 * address-literal = "[" IPv4 / "IPv6:" IPv6 / General-address-literal "]"
 *
 * Follows KumoMTA's EnvelopeAddress: email is "local@domain" (no brackets),
 * the null sender "<>" gives email/user/domain all "", and "<Postmaster>"
 * (case-insensitive, no domain) gives email "Postmaster", user "postmaster",
 * domain "".  Quoted local parts keep their quotes in user and email. */
#ifndef KUMO_ADDR_H
#define KUMO_ADDR_H
#include <stdbool.h>
#include <stddef.h>

#define ADDR_MAX_LOCAL 64     /* RFC 5321 4.5.3.1.1, octets */
#define ADDR_MAX_DOMAIN 255   /* RFC 5321 4.5.3.1.2 */

struct smtp_addr {
	char *email;   /* owned: "user@domain", "" for null sender, "Postmaster" */
	char *user;    /* owned: local part as written (quotes kept) */
	char *domain;  /* owned: domain or "[literal]", "" for null/postmaster */
	bool is_null;
	bool is_postmaster;
};

enum addr_flags {
	ADDR_ALLOW_NULL = 1,        /* "<>" is valid (MAIL FROM) */
	ADDR_ALLOW_POSTMASTER = 2,  /* "<Postmaster>" is valid (RCPT TO) */
	ADDR_REQUIRE_BRACKETS = 4,  /* the path must be in <...> */
};

/* Parses a path starting at s[0] (no leading space skipped).  On success
 * fills *out (free with addr_free), sets *consumed to the bytes used
 * (through the closing '>') and returns 0.  On failure returns -1 and puts a
 * short reason in err.  Bytes after the path are not examined. */
int addr_parse_path(const char *s, size_t len, int flags, struct smtp_addr *out,
		    size_t *consumed, char *err, size_t errlen);

/* Parses a bare "local@domain" string (as given to msg:set_sender in Lua or
 * stored in the spool); "" gives the null address.  0 or -1. */
int addr_parse_email(const char *s, struct smtp_addr *out, char *err, size_t errlen);

void addr_free(struct smtp_addr *a);
void addr_copy(struct smtp_addr *dst, const struct smtp_addr *src);

/* true when domain is a syntactically valid Domain (not a literal). */
bool addr_valid_domain(const char *d, size_t len);

#endif
