/* master_listen: binds the listening sockets named by the policy's
 * kumo.start_esmtp_listener calls, before any privilege drop.
 * Entry point: listeners_bind.  A failure closes what was bound and
 * returns -1 with "cannot listen on <addr>: <reason>". */
#include "master/master.h"
#include "lib/netaddr.h"
#include "lib/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int listeners_bind(const cJSON *listeners, int **fds, size_t *n, char *err, size_t errlen)
{
	size_t cnt = (size_t)cJSON_GetArraySize(listeners), i = 0;
	int *out = xcalloc(cnt ? cnt : 1, sizeof *out);
	const cJSON *l;
	cJSON_ArrayForEach(l, listeners) {
		const cJSON *la = cJSON_GetObjectItemCaseSensitive(l, "listen");
		const char *addr = cJSON_IsString(la) ? la->valuestring : "127.0.0.1:2025";
		struct sockaddr_storage ss;
		socklen_t sl;
		char why[200];
		int fd = -1;
		if (netaddr_parse(addr, &ss, &sl, why, sizeof why) != 0) {
			snprintf(err, errlen, "cannot listen on %s: %s", addr, why);
			goto fail;
		}
		fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
			goto fail;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (ss.ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
			snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
			close(fd);
			goto fail;
		}
		out[i++] = fd;
	}
	*fds = out;
	*n = cnt;
	return 0;
fail:
	for (size_t k = 0; k < i; k++)
		close(out[k]);
	free(out);
	return -1;
}
