/* hist: see hist.h.  Bucket b < 8 holds the value b; above, the values
 * from 2^e to 2^(e+1) - 1 (e >= 3) are split into eight buckets of 2^(e-3)
 * each, numbered from 8 * (e - 2). */
#include "lib/hist.h"

unsigned hist_bucket(uint64_t us)
{
	if (us < 8)
		return (unsigned)us;
	unsigned e = 63u - (unsigned)__builtin_clzll(us);
	unsigned b = 8u * (e - 2u) + (unsigned)((us >> (e - 3u)) & 7u);
	return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

uint64_t hist_low(unsigned b)
{
	if (b < 8)
		return b;
	unsigned e = b / 8u + 2u;
	return (uint64_t)(8u + b % 8u) << (e - 3u);
}

uint64_t hist_quantile(const uint64_t *counts, double q)
{
	uint64_t total = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		total += __atomic_load_n(&counts[b], __ATOMIC_RELAXED);
	if (total == 0)
		return 0;
	/* the rank of the value wanted, from 1 */
	double want = q * (double)total;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++;
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += __atomic_load_n(&counts[b], __ATOMIC_RELAXED);
		if (seen >= rank)
			return b + 1 < HIST_BUCKETS ? hist_low(b + 1) - 1 : hist_low(b);
	}
	return hist_low(HIST_BUCKETS - 1);
}
