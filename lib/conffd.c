/* conffd: see conffd.h. */
#include "lib/conffd.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

cJSON *conffd_read(int fd, char *err, size_t errlen)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "no configuration on descriptor %d: %s", fd, strerror(errno));
		return NULL;
	}
	size_t cap = st.st_size > 0 ? (size_t)st.st_size : 4096, len = 0;
	char *buf = xmalloc(cap + 1);
	for (;;) {
		if (len == cap) {
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t r = pread(fd, buf + len, cap - len, (off_t)len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	cJSON *c = cJSON_ParseWithLength(buf, len);
	free(buf);
	if (!c)
		snprintf(err, errlen, "the configuration on descriptor %d is not valid JSON", fd);
	return c;
}
