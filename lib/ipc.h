/* The policy protocol: what kumod and kumo-smtpd ask kumo-policyd, over the
 * policyd Unix socket, in lib/frame.h frames.  Every request has an integer
 * "id" that the reply echoes, and an "op".  Unknown fields are ignored.
 *
 *   {"id":1,"op":"init"}                                    (kumod, once)
 *   -> {"id":1,"ok":true,"config":{
 *          "listeners":[ {<start_esmtp_listener table as JSON>}, ... ],
 *          "spools":{"data":{"name":"data","path":"...","kind":"LocalDisk","flush":false},
 *                    "meta":{...}},
 *          "logs":{"log_dir":"...", ...} | null,
 *          "resolver":{"name_servers":[...], ...},  (only when the policy
 *                    called kumo.dns.configure_resolver)
 *          "handlers":["smtp_server_ehlo", ...]}}
 *   -> {"id":1,"ok":false,"error":"policy.lua:12: unknown listener parameter 'bannr'"}
 *
 *   {"id":2,"op":"hello"}                                   (smtpd, per connection)
 *   -> {"id":2,"ok":true,"handlers":[...],"generation":G}
 *
 *   {"id":3,"op":"event","event":"smtp_server_mail_from",
 *    "args":[{"__addr":"a@b.example"}], "meta_pos":1, "meta":{<conn meta>}}
 *   The Lua handler is called with args, and the connection metadata object
 *   inserted at 0-based position meta_pos (omit meta_pos: no conn_meta).
 *   An argument {"__addr":"x@y"} becomes an EnvelopeAddress.
 *   -> {"id":3,"ok":true,"result":"ok","ret":<JSON of the first return value>,
 *       "ret2":<second return value, when there is one>,"meta":{<conn meta after>}}
 *   -> {"id":3,"ok":true,"result":"reject","code":550,"text":"5.7.1 no",
 *       "mode":"If421"|"ForceDisconnect"|"FollowWith421","meta":{...}}
 *   -> {"id":3,"ok":true,"result":"error","error":"policy.lua:40: boom"}
 *   -> {"id":3,"ok":true,"result":"ok","ret":null,"nohandler":true}
 *        (no handler for the event, e.g. removed by a reload: the event's
 *        default behaviour applies)
 *   -> {"id":3,"ok":false,"error":"..."}       (bad request, ...)
 *   "meta" is in an ok or reject reply only when the handler called
 *   set_meta on the connection metadata; without it, the metadata is as
 *   it was sent.
 *   With "delta":true in the request (smtpd sends it), the reply has
 *   "meta_set":{name:value,...} instead of "meta": each name the handler
 *   set, once, with its last value, in the order first set.  The client
 *   replaces each name where it is in its copy, or adds it at the end
 *   (as policyd did), and gets the same object.  A message's reply "msg"
 *   has "meta_set" the same way, and no "meta".
 * An event request may carry "then":{"event":E2,"args":[...],"meta_pos":N}
 * (and a "then" of its own): the event that smtpd would send next in the
 * same transaction if this one returns ok, sent along to save a round
 * trip.  policyd runs it only when this handler's result is "ok" (a
 * handler, no reject, no error), with the connection metadata as this
 * handler left it; a "__msg" in its args without "meta" continues this
 * event's message and runs only if the handler changed nothing of that
 * message but its meta, which the continued message then has.  The reply
 * then has "then":{<E2's reply, without id>}; without it, smtpd sends E2
 * itself after applying this reply, as it would have without "then".
 * One request runs at most 4 events; a "then" past those is not run.
 * Every reply to smtpd also carries "generation": it grows with each
 * successful reload ({"op":"reload"} from kumod), and smtpd then asks
 * "hello" again for the new policy's handlers.
 *
 * A message argument (smtp_server_data, smtp_server_message_received) is
 * passed by reference: the bytes stay with smtpd, in a file policyd reads
 * only if the policy asks for them.
 *   {"__msg":{"id":"<32 hex>","sender":"a@b","recipients":["c@d",...],
 *             "meta":{...message meta...},
 *             "path":"/abs/file","size":N,"hdr_end":H}}
 *   Instead of "meta", "meta_from_conn":true: the message's metadata is
 *   a copy of the request's connection metadata ("meta"), sent once.
 *   Instead of "path", "fetch":true: the file is not written yet.  The
 *   first time the policy needs the bytes, policyd asks the client on the
 *   same connection, while the event is in flight (ids of policyd's
 *   requests are its own; an answer has no "op"):
 *     {"id":N,"op":"msg_file","req":<id of the event request>}
 *     -> {"id":N,"ok":true,"path":"/abs/file"}
 *     -> {"id":N,"ok":false,"error":"..."}   (the handler then fails)
 *   smtpd writes the bytes (no fsync) to <data spool>/new/<id>.msg and keeps
 *   the file for the later hooks of the transaction while the bytes stay
 *   the same.
 *   With "path", an optional "offset":O says the bytes start at byte O of
 *   the file (kumo-qmgr passes a spool data segment this way).
 *   hdr_end: bytes [0,H) are the header lines (each ending in CRLF); the
 *   blank line and the body follow.  -1: the message has no blank line.
 *   Optional "prefix":"Received: ...\r\n": text already put before the
 *   file's bytes (the message is prefix + file); the reply's "prefix" is
 *   then the whole prefix, this one included ("" when the handler removed
 *   all of it; with "delta", there only when the handler changed it).
 * The reply then carries what the handler changed, for smtpd to apply:
 *   "msg":{"sender":"...","recipients":[...],"meta":{...},
 *          "prefix":"X-A: 1\r\n",   (optional: text to put before the message)
 *          "headers":"...",          (optional: replaces bytes [0,hdr_end))
 *          "data":"..."}             (optional: replaces the whole message;
 *                                     then prefix and headers are absent)
 *
 * A reply with "ok":false or "result":"error" is a failure of policy: smtpd
 * answers 4xx (421 4.3.0 <host> technical difficulties), never 250.
 */
#ifndef KUMO_IPC_H
#define KUMO_IPC_H
#include "lib/hist.h"
#include <stddef.h>
#include <stdint.h>

/* Inherited descriptors, fixed numbers. */
#define FD_CONFIG      3   /* kumo-smtpd: memfd holding the config JSON */
#define FD_COUNTERS    4   /* kumo-smtpd: memfd of session counters, see below */
#define FD_POLICY_LISTEN 3 /* kumo-policyd: the listening policy socket */
#define FD_LISTEN_BASE 5   /* kumo-smtpd: listener sockets 5, 6, ... */
#define FD_QMGR_LISTEN 4   /* kumo-qmgr: its listening socket (FD_CONFIG is 3) */

/* The session counters (FD_COUNTERS): uint64_t counters[workers][listeners],
 * shared by every kumo-smtpd through mmap.  A worker changes only its own
 * row (atomically); max_connections is checked against the sum of a
 * listener's column.  kumod zeroes a worker's row before restarting it, so
 * sessions of a dead worker stop counting.
 * After them (IPC_COMMIT_STATS_OFF) come the commit statistics, one
 * struct ipc_commit_stats per worker, added to (atomically) by that
 * worker's spool writer thread after each commit and summed by kumod for
 * `kumoctl status`.  They count from kumod's start: a restarted worker goes
 * on adding to its row. */
struct ipc_commit_stats {
	uint64_t commits;   /* group commits that stored messages */
	uint64_t messages;  /* messages they stored */
	uint64_t failed;    /* messages a commit could not store */
	uint64_t us_total;  /* time spent in them, microseconds */
	uint64_t us_hist[HIST_BUCKETS]; /* their durations (lib/hist.h) */
};
#define IPC_COUNTERS_LEN(workers, listeners) \
	((size_t)(workers) * (size_t)((listeners) ? (listeners) : 1) * sizeof(uint64_t))
#define IPC_COMMIT_STATS_OFF(workers, listeners) \
	((IPC_COUNTERS_LEN(workers, listeners) + 63u) & ~(size_t)63u)
#define IPC_SHARED_LEN(workers, listeners) \
	(IPC_COMMIT_STATS_OFF(workers, listeners) + (size_t)(workers) * sizeof(struct ipc_commit_stats))

/* kumo-smtpd's config JSON (FD_CONFIG):
 * {"policy_socket":"@kumomta-123-policyd", "listeners":[{...}, ...],
 *  "spools":{...}, "logs":{...}|null, "handlers":[...], "worker":N}
 * listeners[i] is served on FD_LISTEN_BASE + i.
 * A socket name starting with '@' is in the abstract namespace. */

#endif
