/* jsonw: cJSON documents printed as cJSON_PrintUnformatted prints them (the
 * same text; whole numbers up to 2^53 exactly, where cJSON's 15 digits
 * would round), without the floating-point printf and sscanf cJSON runs
 * for every number, into a growable buffer.  Used for log records and IPC
 * frames, which are printed once per message or more. */
#ifndef KUMO_JSONW_H
#define KUMO_JSONW_H
#include <stddef.h>
#include <cjson/cJSON.h>

struct jbuf {
	char *p;      /* owned; not NUL-terminated unless jbuf_cstr */
	size_t len, cap;
};

void jbuf_add(struct jbuf *b, const void *s, size_t n);
/* A JSON string (s escaped as cJSON escapes), a whole number. */
void jbuf_str(struct jbuf *b, const char *s);
void jbuf_num(struct jbuf *b, double d);
/* Appends v's text. */
void jbuf_value(struct jbuf *b, const cJSON *v);
/* NUL-terminates and returns b->p (still owned by b). */
char *jbuf_cstr(struct jbuf *b);
void jbuf_free(struct jbuf *b);

/* v's text as a new string (caller frees), like cJSON_PrintUnformatted;
 * *len (may be NULL) gets its length. */
char *json_print(const cJSON *v, size_t *len);

#endif
