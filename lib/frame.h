/* IPC framing shared by every internal socket: a 4-byte big-endian length,
 * then a JSON object, at most FRAME_MAX bytes, read strictly (lib/jsonr.h)
 * into a cJSON tree.  Requests carry an "id" that the reply echoes; unknown
 * fields are ignored. */
#ifndef KUMO_FRAME_H
#define KUMO_FRAME_H
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

struct evbuffer;

#define FRAME_MAX (64u * 1024u * 1024u)

/* Pure decoder: looks at buf[0..len).  Returns 1 and sets *out (caller owns)
 * and *used when a whole frame is there, 0 when more bytes are needed, -1 on
 * a malformed frame (err says why). */
int frame_decode(const uint8_t *buf, size_t len, cJSON **out, size_t *used,
		 char *err, size_t errlen);

/* Appends the frame for doc to out.  Returns 0, or -1 if too large. */
int frame_encode(struct evbuffer *out, const cJSON *doc);
/* The same for JSON text the caller made (it must be one object). */
int frame_encode_text(struct evbuffer *out, const char *json, size_t len);

/* The frame for doc as one buffer (owned by the caller) of *len bytes, for
 * a writer that is not an event loop; NULL if too large. */
uint8_t *frame_text(const cJSON *doc, size_t *len);

/* Pulls one frame out of an evbuffer; same returns as frame_decode. */
int frame_read(struct evbuffer *in, cJSON **out, char *err, size_t errlen);

/* Blocking helpers for start-up exchanges (kumod <-> policyd, kumoctl).
 * frame_recv_fd waits at most timeout_ms (-1: forever). 0 ok, -1 error. */
int frame_send_fd(int fd, const cJSON *doc, char *err, size_t errlen);
int frame_recv_fd(int fd, cJSON **out, int timeout_ms, char *err, size_t errlen);

#endif
