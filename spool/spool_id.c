/* spool_id: time-ordered 128-bit message ids in UUID v1 layout, printed as
 * 32 lowercase hex digits (KumoMTA's Uuid::simple form).  The node field is
 * random per process (multicast bit set, RFC 4122 4.5), so two processes
 * never collide (a forked child draws its own); within a process the 100 ns
 * timestamp strictly increases. */
#include "spool/spool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define UUID_EPOCH_OFFSET 0x01B21DD213814000ULL /* 1582-10-15 to 1970-01-01, 100 ns */

static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_ts;
static uint8_t node[6];
static uint16_t clock_seq;
static bool node_ready;      /* false at start and in a forked child */
static bool atfork_set;

static void forked(void)
{
	node_ready = false; /* the child draws its own node */
}

static void init_node(void)
{
	uint8_t r[8];
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_sec;
		memcpy(r, &x, 8);
	}
	memcpy(node, r, 6);
	node[0] |= 0x01;
	clock_seq = (uint16_t)(((r[6] << 8) | r[7]) & 0x3fff);
	last_ts = 0;
	node_ready = true;
	if (!atfork_set)
		atfork_set = pthread_atfork(NULL, NULL, forked) == 0;
}

static char *hex(char *p, uint64_t v, int digits)
{
	static const char d[] = "0123456789abcdef";
	for (int i = digits - 1; i >= 0; i--, v >>= 4)
		p[i] = d[v & 15];
	return p + digits;
}

void spool_id_new(char out[SPOOL_ID_LEN + 1])
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t t = (uint64_t)ts.tv_sec * 10000000ULL + (uint64_t)ts.tv_nsec / 100 + UUID_EPOCH_OFFSET;
	pthread_mutex_lock(&id_lock);
	if (!node_ready)
		init_node();
	if (t <= last_ts)
		t = last_ts + 1;
	last_ts = t;
	uint16_t seq = clock_seq;
	uint8_t n[6];
	memcpy(n, node, 6);
	pthread_mutex_unlock(&id_lock);

	char *p = out;
	p = hex(p, t & 0xffffffffu, 8);                            /* time_low */
	p = hex(p, (t >> 32) & 0xffff, 4);                         /* time_mid */
	p = hex(p, ((t >> 48) & 0x0fff) | 0x1000, 4);              /* time_hi, version 1 */
	p = hex(p, (uint64_t)(seq | 0x8000), 4);                   /* variant, clock_seq */
	for (int i = 0; i < 6; i++)
		p = hex(p, n[i], 2);                               /* node */
	*p = '\0';
}

bool spool_id_valid(const char *id)
{
	for (int i = 0; i < SPOOL_ID_LEN; i++) {
		char c = id[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return id[SPOOL_ID_LEN] == '\0';
}

static uint64_t hexval(const char *s, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		char c = s[i];
		v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
	}
	return v;
}

double spool_id_time(const char *id)
{
	if (!spool_id_valid(id))
		return -1;
	uint64_t t = hexval(id, 8) | hexval(id + 8, 4) << 32 | (hexval(id + 13, 3)) << 48;
	if (t < UUID_EPOCH_OFFSET)
		return -1;
	return (double)(t - UUID_EPOCH_OFFSET) / 1e7;
}
