/* JSON log records in KumoMTA's shape (reference/log_record.md), one per
 * line, written to segment files named YYYYMMDD-HHMMSS.<nanoseconds> (UTC)
 * under kumo.configure_local_logs' log_dir.  Unlike KumoMTA the segments
 * are plain text, not zstd-compressed.  Each process writes its own
 * segment; a segment is closed at max_file_size bytes or after
 * max_segment_duration. */
#ifndef KUMO_LOGREC_H
#define KUMO_LOGREC_H
#include <stddef.h>
#include <time.h>
#include <cjson/cJSON.h>

struct logrec {
	char *dir;            /* owned; NULL: logging disabled */
	int fd;               /* current segment, -1 if none */
	size_t written;       /* bytes in the current segment */
	size_t max_file_size; /* default 1,000,000,000 */
	double max_segment_duration; /* seconds, 0 = unlimited */
	time_t opened;
	char nodeid[37];
};

/* Reads a configure_local_logs table (NULL or JSON null: disabled), creates
 * log_dir.  0 or -1 with a reason. */
int logrec_open(struct logrec *lr, const cJSON *conf, char *err, size_t errlen);
void logrec_close(struct logrec *lr);

/* A record with the fields every type has: type, id, sender, recipient,
 * queue, site, size, timestamps, nodeid, ...; callers add the rest. */
cJSON *logrec_new(const struct logrec *lr, const char *type, const char *id, double created);

/* Writes the record as one line and frees it.  0, or -1 with a reason. */
int logrec_write(struct logrec *lr, cJSON *rec, char *err, size_t errlen);

/* "response" object: code, enhanced_code parsed from the text, content,
 * command. */
cJSON *logrec_response(int code, const char *text, const char *command);

/* RFC 3339 time with nanoseconds, UTC. */
void logrec_rfc3339(double t, char *buf, size_t buflen);

#endif
