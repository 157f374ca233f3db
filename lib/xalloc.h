/* Allocation wrappers: abort the process when memory runs out, so callers
 * never check for NULL.  The master restarts a child that dies this way. */
#ifndef KUMO_XALLOC_H
#define KUMO_XALLOC_H
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* asprintf that aborts on failure */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
