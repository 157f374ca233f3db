/* hist: a latency histogram in fixed buckets, eight per power of two (each
 * at most 12.5% wide), from 0 to about two minutes in microseconds.  Kept in
 * shared memory by the spool writers (lib/ipc.h) and read by kumod for
 * `kumoctl status`; plain arrays of counters, so that one process may add
 * (atomically) while another reads. */
#ifndef KUMO_HIST_H
#define KUMO_HIST_H
#include <stddef.h>
#include <stdint.h>

#define HIST_BUCKETS 200

/* The bucket of a value; values past the last bucket count in it. */
unsigned hist_bucket(uint64_t us);
/* The smallest value of bucket b; hist_low(b + 1) is past its largest. */
uint64_t hist_low(unsigned b);
/* The value at quantile q (0 < q <= 1) of the counts, given as the upper
 * end of the bucket holding it (never below the true value, at most 12.5%
 * above it); 0 when the counts are all zero. */
uint64_t hist_quantile(const uint64_t *counts, double q);

#endif
