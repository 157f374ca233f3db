/* Reading the configuration kumod hands a child on a descriptor (a memfd
 * holding JSON, lib/ipc.h FD_CONFIG).  pread, so children sharing one open
 * file description do not disturb each other's offset. */
#ifndef KUMO_CONFFD_H
#define KUMO_CONFFD_H
#include <stddef.h>
#include <cjson/cJSON.h>

/* The parsed document (caller owns), or NULL with a reason.  Closes fd. */
cJSON *conffd_read(int fd, char *err, size_t errlen);

#endif
