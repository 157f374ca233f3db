/* master_notify: systemd's readiness protocol without libsystemd.  When
 * $NOTIFY_SOCKET names a Unix datagram socket (a path, or "@name" in the
 * abstract namespace), kumod sends it "READY=1" once the workers run,
 * "RELOADING=1" and "READY=1" around a reload, and "STOPPING=1" at a
 * graceful stop, as sd_notify(3) describes.  Without the variable, nothing.
 * Entry point: master_notify. */
#include "master/master.h"
#include "lib/netaddr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int master_notify(const char *state)
{
	const char *name = getenv("NOTIFY_SOCKET");
	if (!name || !name[0] || (name[0] != '/' && name[0] != '@'))
		return 0;
	struct sockaddr_un sun;
	socklen_t len = netaddr_unix(name, &sun);
	if (len == 0)
		return -1;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	char msg[256];
	int n = snprintf(msg, sizeof msg, "%s\nMAINPID=%d", state, (int)getpid());
	ssize_t w = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
	close(fd);
	return w == n ? 0 : -1;
}
