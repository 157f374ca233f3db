/* Check suite for qmgr/qmgr_dns.c.
 *  - parse: mx_list string entries -> host and port, or a substring of the error;
 *  - domain: a mail domain resolved against build/t/dnsd (found through
 *    KUMO_TOOLS, started once with -p 0 on a zone written here) -> the hosts
 *    in order as text, or a status and an error substring;
 *  - list: an mx_list resolved the same way;
 *  - then single cases: random order of equal preferences, many MX records
 *    (a truncated UDP answer, retried over TCP), timeout, dns_cancel, dns_free
 *    with queries outstanding, callbacks that start queries or free the
 *    resolver, dns_new errors. */
#include "qmgr/qmgr_dns.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 10000
#define BIG_MX 40

/* ---- mx_entry_parse ------------------------------------------------------ */

struct parse_case {
	const char *in;
	const char *host;  /* NULL: parse must fail */
	int port;          /* or, on failure: */
	const char *why;   /* error substring */
};

static const struct parse_case parse_cases[] = {
	{ "mx.example.com", "mx.example.com", 0, NULL },
	{ "mx.example.com.", "mx.example.com.", 0, NULL },
	{ "mx.example.com:2525", "mx.example.com", 2525, NULL },
	{ "MX-1.Example_x.com:25", "MX-1.Example_x.com", 25, NULL },
	{ "localhost:65535", "localhost", 65535, NULL },
	{ "host:1", "host", 1, NULL },
	{ "127.0.0.1", "127.0.0.1", 0, NULL },
	{ "127.0.0.1:2526", "127.0.0.1", 2526, NULL },
	{ "[10.0.0.1]", "10.0.0.1", 0, NULL },
	{ "[10.0.0.1]:2526", "10.0.0.1", 2526, NULL },
	{ "[::1]", "::1", 0, NULL },
	{ "[::1]:2526", "::1", 2526, NULL },
	{ "::1", "::1", 0, NULL },
	{ "2001:db8::25", "2001:db8::25", 0, NULL },
	{ "[IPv6:::1]", "::1", 0, NULL },
	{ "[ipv6:2001:db8::1]:587", "2001:db8::1", 587, NULL },
	{ "[::ffff:10.0.0.1]", "::ffff:10.0.0.1", 0, NULL },
	{ "", NULL, 0, "empty" },
	{ "[1.2.3.4", NULL, 0, "missing ']'" },
	{ "[::1:25", NULL, 0, "missing ']'" },
	{ "host:99999", NULL, 0, "port out of range" },
	{ "host:65536", NULL, 0, "port out of range" },
	{ "host:0", NULL, 0, "port out of range" },
	{ "host:123456789012345678901234567890", NULL, 0, "port out of range" },
	{ "host:", NULL, 0, "missing port" },
	{ "[1.2.3.4]:", NULL, 0, "missing port" },
	{ "host:25x", NULL, 0, "bad port" },
	{ "host:-1", NULL, 0, "bad port" },
	{ "host:+25", NULL, 0, "bad port" },
	{ "host: 25", NULL, 0, "bad port" },
	{ "[]", NULL, 0, "bad address literal" },
	{ "[mx.example.com]", NULL, 0, "bad address literal" },
	{ "[1.2.3]", NULL, 0, "bad address literal" },
	{ "[1.2.3.4]x", NULL, 0, "unexpected text" },
	{ "[1.2.3.4]]", NULL, 0, "unexpected text" },
	{ "[IPv6:1.2.3.4]", NULL, 0, "bad IPv6 literal" },
	{ "[IPv6:]", NULL, 0, "bad IPv6 literal" },
	{ "::1::2", NULL, 0, "bad IPv6 address" },
	{ "host:25:26", NULL, 0, "bad IPv6 address" },
	{ "fe80::1%eth0", NULL, 0, "bad IPv6 address" },
	{ "host name", NULL, 0, "bad host name" },
	{ " host", NULL, 0, "bad host name" },
	{ "a..b", NULL, 0, "bad host name" },
	{ ".a", NULL, 0, "bad host name" },
	{ ".", NULL, 0, "bad host name" },
	{ ":25", NULL, 0, "bad host name" },
	{ "h\xc3\xa9.example", NULL, 0, "bad host name" },
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example", NULL, 0,
	  "bad host name" },   /* a 64-byte label */
};

START_TEST(test_parse)
{
	const struct parse_case *c = &parse_cases[_i];
	char err[256] = "";
	char *host = (char *)"unset";
	int port = -1;
	int rc = mx_entry_parse(c->in, &host, &port, err, sizeof err);
	if (!c->host) {
		ck_assert_msg(rc == -1, "row %d: \"%s\" parsed as %s port %d", _i, c->in, host, port);
		ck_assert_ptr_null(host);
		ck_assert_msg(strstr(err, c->why) != NULL, "row %d: \"%s\": error \"%s\" lacks \"%s\"",
			      _i, c->in, err, c->why);
		return;
	}
	ck_assert_msg(rc == 0, "row %d: \"%s\": %s", _i, c->in, err);
	ck_assert_str_eq(host, c->host);
	ck_assert_int_eq(port, c->port);
	free(host);
}
END_TEST

START_TEST(test_parse_long)
{
	/* longer than any host name with a port: refused before parsing */
	char s[400];
	memset(s, 'a', sizeof s - 1);
	s[sizeof s - 1] = '\0';
	char err[64], *host;
	int port;
	ck_assert_int_eq(mx_entry_parse(s, &host, &port, err, sizeof err), -1);
	ck_assert_ptr_null(host);
	ck_assert_ptr_nonnull(strstr(err, "too long"));
	/* a tiny error buffer is cut, not overrun */
	char small[8];
	ck_assert_int_eq(mx_entry_parse("host:99999", &host, &port, small, sizeof small), -1);
	ck_assert_int_eq((int)strlen(small), 7);
}
END_TEST

/* ---- the DNS server ------------------------------------------------------ */

static char tmpdir[64];
static pid_t dnsd_pid = -1;
static int dnsd_port;
static int dnsd_bad_exit;    /* set by teardown: main fails the run */

static void write_zone(const char *path)
{
	FILE *f = fopen(path, "w");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	fputs("# MX ordering\n"
	      "order.test MX 20 mx20.order.test\n"
	      "order.test MX 10 mx10.order.test\n"
	      "order.test MX 30 mx30.order.test\n"
	      "mx10.order.test A 127.0.0.10\n"
	      "mx20.order.test A 127.0.0.20\n"
	      "mx30.order.test A 127.0.0.30\n"
	      "# equal preferences\n"
	      "tie.test MX 10 a.tie.test\n"
	      "tie.test MX 10 b.tie.test\n"
	      "tie.test MX 5 first.tie.test\n"
	      "a.tie.test A 127.0.1.1\n"
	      "b.tie.test A 127.0.1.2\n"
	      "first.tie.test A 127.0.1.3\n"
	      "implicit.test A 127.0.2.1\n"
	      "implicit6.test AAAA 2001:db8::2\n"
	      "dual.test MX 5 mx.dual.test\n"
	      "mx.dual.test AAAA 2001:db8::1\n"
	      "mx.dual.test A 127.0.3.1\n"
	      "mx.dual.test A 127.0.3.2\n"
	      "nullmx.test MX 0 .\n"
	      "halfnull.test MX 0 .\n"
	      "halfnull.test MX 10 mx.order.test\n"
	      "mx.order.test A 127.0.9.1\n"
	      "servfail.test SERVFAIL\n"
	      "refused.test REFUSED\n"
	      "drop.test DROP\n"
	      "# MX hosts without addresses are dropped\n"
	      "dropped.test MX 10 noaddr.dropped.test\n"
	      "dropped.test MX 15 missing.dropped.test\n"
	      "dropped.test MX 20 mx.dropped.test\n"
	      "noaddr.dropped.test MX 10 mx.dropped.test\n"
	      "mx.dropped.test A 127.0.4.1\n"
	      "noaddrs.test MX 10 nothing.noaddrs.test\n"
	      "tempaddr.test MX 10 sf.tempaddr.test\n"
	      "tempaddr.test MX 20 nothing.tempaddr.test\n"
	      "sf.tempaddr.test SERVFAIL\n"
	      "nodata.test DELAY 0\n"
	      "Case.TEST. MX 10 MX.Case.Test.\n"
	      "mx.case.test A 127.0.7.1\n"
	      "dup.test MX 20 mx.dup.test\n"
	      "dup.test MX 10 MX.DUP.test.\n"
	      "mx.dup.test A 127.0.8.1\n"
	      "list1.test A 127.0.5.1\n"
	      "list2.test AAAA ::1\n"
	      "slow.test MX 10 mx.slow.test\n"
	      "slow.test DELAY 300\n"
	      "mx.slow.test A 127.0.6.1\n",
	      f);
	for (int i = 1; i <= BIG_MX; i++)
		fprintf(f, "big.test MX %d h%02d.big.test\nh%02d.big.test A 127.1.0.%d\n", i, i, i, i);
	ck_assert_int_eq(fclose(f), 0);
}

static void dnsd_stop(void);

static void dnsd_start(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/kumo-dns-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	char zone[128], prog[512];
	snprintf(zone, sizeof zone, "%s/zone", tmpdir);
	write_zone(zone);
	const char *tools = getenv("KUMO_TOOLS");
	snprintf(prog, sizeof prog, "%s/dnsd", tools && *tools ? tools : "build/t");

	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(pfd[0]);
		if (dup2(pfd[1], 1) < 0)
			_exit(127);
		close(pfd[1]);
		execl(prog, "dnsd", "-p", "0", "-z", zone, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", prog, strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	dnsd_pid = pid;
	char line[64];
	size_t n = 0;
	while (n < sizeof line - 1) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		if (poll(&p, 1, WAIT_MS) != 1)
			break;
		ssize_t r = read(pfd[0], line + n, 1);
		if (r != 1 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	close(pfd[0]);
	if (sscanf(line, "ready %d", &dnsd_port) != 1 || dnsd_port <= 0) {
		/* Check runs no teardown after a failed unchecked setup */
		dnsd_stop();
		ck_abort_msg("%s did not start (said \"%s\")", prog, line);
	}
}

static void dnsd_stop(void)
{
	if (dnsd_pid > 0) {
		int st = 0;
		kill(dnsd_pid, SIGTERM);
		if (waitpid(dnsd_pid, &st, 0) == dnsd_pid && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			fprintf(stderr, "dnsd exited with status %#x\n", (unsigned)st);
			dnsd_bad_exit = 1;
		}
		dnsd_pid = -1;
	}
	if (tmpdir[0]) {
		char zone[128];
		snprintf(zone, sizeof zone, "%s/zone", tmpdir);
		unlink(zone);
		rmdir(tmpdir);
		tmpdir[0] = '\0';
	}
}

/* ---- resolver plumbing --------------------------------------------------- */

static struct event_base *base;
static struct dns *dns;

static struct dns *new_dns(int timeout_ms, int tries)
{
	char servers[64], err[256] = "";
	snprintf(servers, sizeof servers, "127.0.0.1:%d", dnsd_port);
	struct dns *d = dns_new(base, servers, timeout_ms, tries, err, sizeof err);
	ck_assert_msg(d != NULL, "dns_new: %s", err);
	return d;
}

static void setup(void)
{
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	dns = new_dns(2000, 2);
}

static void teardown(void)
{
	dns_free(dns);
	dns = NULL;
	event_base_free(base);
	base = NULL;
}

struct waiter {
	int calls;
	struct mx_result *res;   /* owned: the last result */
	int *total;              /* if set, counts every waiter's callbacks */
};

static void on_result(void *arg, struct mx_result *res)
{
	struct waiter *w = arg;
	w->calls++;
	if (w->total)
		(*w->total)++;
	mx_result_free(w->res);
	w->res = res;
}

static void expire_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
}

/* runs the loop until *count reaches want or ms pass; true if reached */
static bool run_until(const int *count, int want, int ms)
{
	bool expired = false;
	struct event *t = evtimer_new(base, expire_cb, &expired);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(t, &tv);
	while ((!count || *count < want) && !expired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(t);
	return count && *count >= want;
}

/* "name pref port addr addr|name ..." */
static void format_result(const struct mx_result *r, char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < r->n_hosts; i++) {
		const struct mx_host *h = &r->hosts[i];
		int n = snprintf(buf + off, len - off, "%s%s %d %d", i ? "|" : "", h->name,
				 h->preference, h->port);
		ck_assert(n > 0 && (size_t)n < len - off);
		off += (size_t)n;
		for (size_t j = 0; j < h->n_addrs; j++) {
			char ip[INET6_ADDRSTRLEN];
			const struct sockaddr_storage *ss = &h->addrs[j];
			if (ss->ss_family == AF_INET) {
				const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
				ck_assert_int_eq(sin->sin_port, 0);
				inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
			} else {
				const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
				ck_assert_int_eq(ss->ss_family, AF_INET6);
				ck_assert_int_eq(sin6->sin6_port, 0);
				inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
			}
			n = snprintf(buf + off, len - off, " %s", ip);
			ck_assert(n > 0 && (size_t)n < len - off);
			off += (size_t)n;
		}
	}
}

/* checks a delivered result against an expected status and text: the hosts
 * for DNS_OK, an error substring otherwise */
static void check_result(int row, const char *what, struct waiter *w, enum dns_status st,
			 const char *want)
{
	ck_assert_msg(w->calls == 1, "row %d (%s): %d callbacks", row, what, w->calls);
	struct mx_result *r = w->res;
	ck_assert_ptr_nonnull(r);
	char got[4096];
	format_result(r, got, sizeof got);
	ck_assert_msg(r->status == st, "row %d (%s): status %d, want %d (error \"%s\", hosts \"%s\")",
		      row, what, r->status, st, r->error ? r->error : "", got);
	if (st == DNS_OK) {
		ck_assert_ptr_null(r->error);
		ck_assert_msg(strcmp(got, want) == 0, "row %d (%s): got \"%s\", want \"%s\"", row,
			      what, got, want);
	} else {
		ck_assert_msg(r->error && strstr(r->error, want), "row %d (%s): error \"%s\" lacks \"%s\"",
			      row, what, r->error ? r->error : "(null)", want);
		ck_assert_uint_eq(r->n_hosts, 0);
	}
}

/* ---- domains ------------------------------------------------------------- */

struct domain_case {
	const char *domain;
	enum dns_status status;
	const char *want;   /* hosts as format_result prints them, or an error substring */
};

static const struct domain_case domain_cases[] = {
	{ "order.test", DNS_OK,
	  "mx10.order.test 10 0 127.0.0.10|mx20.order.test 20 0 127.0.0.20|"
	  "mx30.order.test 30 0 127.0.0.30" },
	{ "implicit.test", DNS_OK, "implicit.test 0 0 127.0.2.1" },
	{ "implicit6.test", DNS_OK, "implicit6.test 0 0 2001:db8::2" },
	{ "IMPLICIT.test.", DNS_OK, "IMPLICIT.test 0 0 127.0.2.1" },
	{ "dual.test", DNS_OK, "mx.dual.test 5 0 127.0.3.1 127.0.3.2 2001:db8::1" },
	{ "nx.test", DNS_PERMFAIL, "NXDOMAIN for nx.test" },
	{ "nullmx.test", DNS_PERMFAIL, "nullmx.test does not accept mail (null MX)" },
	{ "halfnull.test", DNS_OK, "mx.order.test 10 0 127.0.9.1" },
	{ "servfail.test", DNS_TEMPFAIL, "looking up MX for servfail.test" },
	{ "refused.test", DNS_TEMPFAIL, "looking up MX for refused.test" },
	{ "dropped.test", DNS_OK, "mx.dropped.test 20 0 127.0.4.1" },
	{ "noaddrs.test", DNS_PERMFAIL, "no MX host of noaddrs.test has an address" },
	{ "tempaddr.test", DNS_TEMPFAIL, "looking up A for" },
	{ "tempaddr.test", DNS_TEMPFAIL, "sf.tempaddr.test" },
	{ "nodata.test", DNS_PERMFAIL, "no MX, A or AAAA records for nodata.test" },
	{ "Case.Test.", DNS_OK, "mx.case.test 10 0 127.0.7.1" },
	{ "dup.test", DNS_OK, "mx.dup.test 10 0 127.0.8.1" },
	{ "[127.0.0.1]", DNS_OK, "127.0.0.1 0 0 127.0.0.1" },
	{ "[IPv6:::1]", DNS_OK, "::1 0 0 ::1" },
	{ "[ipv6:2001:DB8::5]", DNS_OK, "2001:DB8::5 0 0 2001:db8::5" },
	{ "[::1]", DNS_OK, "::1 0 0 ::1" },
	{ "[1.2.3]", DNS_PERMFAIL, "unsupported address literal [1.2.3]" },
	{ "[IPv6:1.2.3.4]", DNS_PERMFAIL, "unsupported address literal" },
	{ "[1.2.3.4", DNS_PERMFAIL, "unsupported address literal" },
	{ "[]", DNS_PERMFAIL, "unsupported address literal" },
	{ "[tag:content]", DNS_PERMFAIL, "unsupported address literal" },
	{ "", DNS_PERMFAIL, "invalid domain" },
	{ ".", DNS_PERMFAIL, "invalid domain" },
	{ "a..test", DNS_PERMFAIL, "invalid domain" },
	{ "has space.test", DNS_PERMFAIL, "invalid domain" },
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test", DNS_PERMFAIL,
	  "invalid domain" },
};

START_TEST(test_domain)
{
	const struct domain_case *c = &domain_cases[_i];
	struct waiter w = { 0 };
	struct dns_query *q = dns_resolve_domain(dns, c->domain, on_result, &w);
	ck_assert_ptr_nonnull(q);
	ck_assert_msg(w.calls == 0, "row %d: callback from within dns_resolve_domain", _i);
	run_until(&w.calls, 1, WAIT_MS);
	check_result(_i, c->domain, &w, c->status, c->want);
	/* nothing more comes */
	run_until(NULL, 0, 20);
	ck_assert_int_eq(w.calls, 1);
	mx_result_free(w.res);
}
END_TEST

START_TEST(test_domain_too_long)
{
	char name[600];
	for (size_t i = 0; i + 1 < sizeof name; i++)
		name[i] = (i % 10 == 9) ? '.' : 'a';
	name[sizeof name - 1] = '\0';
	struct waiter w = { 0 };
	ck_assert_ptr_nonnull(dns_resolve_domain(dns, name, on_result, &w));
	run_until(&w.calls, 1, WAIT_MS);
	check_result(0, "600 bytes", &w, DNS_PERMFAIL, "invalid domain");
	ck_assert(strlen(w.res->error) < 400);
	mx_result_free(w.res);
}
END_TEST

/* ---- mx_list ------------------------------------------------------------- */

struct list_case {
	struct mx_entry e[8];
	size_t n;
	enum dns_status status;
	const char *want;
};

static const struct list_case list_cases[] = {
	{ { { "list1.test", NULL }, { "127.0.0.1", NULL }, { "[10.0.0.1]:2526", NULL },
	    { "list2.test:2525", NULL }, { "::1", NULL }, { "[::1]:2527", NULL },
	    { "labelled", "192.0.2.9:26" }, { NULL, "[::2]" } },
	  8, DNS_OK,
	  "list1.test 0 0 127.0.5.1|127.0.0.1 1 0 127.0.0.1|10.0.0.1 2 2526 10.0.0.1|"
	  "list2.test 3 2525 ::1|::1 4 0 ::1|::1 5 2527 ::1|labelled 6 26 192.0.2.9|::2 7 0 ::2" },
	{ { { "nx.test", NULL }, { "mx10.order.test:26", NULL } },
	  2, DNS_OK, "mx10.order.test 1 26 127.0.0.10" },
	/* names only: no MX lookup, so an MX-only name has no address */
	{ { { "order.test", NULL }, { "[IPv6:::1]", NULL } }, 2, DNS_OK, "::1 1 0 ::1" },
	{ { { "nx.test", NULL }, { "order.test", NULL } },
	  2, DNS_PERMFAIL, "no mx_list host has an address" },
	{ { { "servfail.test", NULL }, { "nx.test", NULL } },
	  2, DNS_TEMPFAIL, "looking up A for servfail.test" },
	{ { { "list1.test", NULL }, { "host:99999", NULL } },
	  2, DNS_TEMPFAIL, "mx_list entry 2: port out of range" },
	{ { { "x", "mx.example.com" } }, 1, DNS_TEMPFAIL, "not an IP address" },
	{ { { "x", "[1.2.3.4" } }, 1, DNS_TEMPFAIL, "missing ']'" },
	{ { { NULL, NULL } }, 1, DNS_TEMPFAIL, "neither name nor addr" },
	{ { { "", NULL } }, 1, DNS_TEMPFAIL, "empty" },
	{ { { NULL, NULL } }, 0, DNS_TEMPFAIL, "empty mx_list" },
};

START_TEST(test_list)
{
	const struct list_case *c = &list_cases[_i];
	struct waiter w = { 0 };
	struct dns_query *q = dns_resolve_list(dns, c->e, c->n, on_result, &w);
	ck_assert_ptr_nonnull(q);
	ck_assert_msg(w.calls == 0, "row %d: callback from within dns_resolve_list", _i);
	run_until(&w.calls, 1, WAIT_MS);
	check_result(_i, "list", &w, c->status, c->want);
	run_until(NULL, 0, 20);
	ck_assert_int_eq(w.calls, 1);
	mx_result_free(w.res);
}
END_TEST

/* ---- single cases -------------------------------------------------------- */

/* equal preferences come in both orders, after the lower preference */
START_TEST(test_equal_preference_random)
{
	enum { N = 40 };
	struct waiter w[N];
	int total = 0, a_first = 0, b_first = 0;
	memset(w, 0, sizeof w);
	for (int i = 0; i < N; i++) {
		w[i].total = &total;
		ck_assert_ptr_nonnull(dns_resolve_domain(dns, "tie.test", on_result, &w[i]));
	}
	ck_assert_msg(run_until(&total, N, WAIT_MS), "only %d of %d answers", total, N);
	for (int i = 0; i < N; i++) {
		struct mx_result *r = w[i].res;
		ck_assert_int_eq(w[i].calls, 1);
		ck_assert_int_eq(r->status, DNS_OK);
		ck_assert_uint_eq(r->n_hosts, 3);
		ck_assert_str_eq(r->hosts[0].name, "first.tie.test");
		ck_assert_int_eq(r->hosts[1].preference, 10);
		ck_assert_int_eq(r->hosts[2].preference, 10);
		if (strcmp(r->hosts[1].name, "a.tie.test") == 0) {
			ck_assert_str_eq(r->hosts[2].name, "b.tie.test");
			a_first++;
		} else {
			ck_assert_str_eq(r->hosts[1].name, "b.tie.test");
			ck_assert_str_eq(r->hosts[2].name, "a.tie.test");
			b_first++;
		}
		mx_result_free(r);
	}
	ck_assert_msg(a_first > 0 && b_first > 0, "a first %d times, b first %d times", a_first,
		      b_first);
}
END_TEST

/* 40 MX records do not fit 512 bytes: dnsd sets TC, c-ares asks again over
 * TCP; the result keeps the DNS_MAX_HOSTS best */
START_TEST(test_many_mx_over_tcp)
{
	struct waiter w = { 0 };
	dns_resolve_domain(dns, "big.test", on_result, &w);
	run_until(&w.calls, 1, WAIT_MS);
	ck_assert_int_eq(w.calls, 1);
	struct mx_result *r = w.res;
	ck_assert_msg(r->status == DNS_OK, "%s", r->error);
	ck_assert_uint_eq(r->n_hosts, DNS_MAX_HOSTS);
	for (size_t i = 0; i < r->n_hosts; i++) {
		char name[32];
		snprintf(name, sizeof name, "h%02zu.big.test", i + 1);
		ck_assert_str_eq(r->hosts[i].name, name);
		ck_assert_int_eq(r->hosts[i].preference, (int)i + 1);
		ck_assert_uint_eq(r->hosts[i].n_addrs, 1);
	}
	mx_result_free(r);
}
END_TEST

START_TEST(test_timeout_is_tempfail)
{
	struct dns *d = new_dns(200, 1);
	struct waiter w = { 0 };
	dns_resolve_domain(d, "drop.test", on_result, &w);
	run_until(&w.calls, 1, WAIT_MS);
	check_result(0, "drop.test", &w, DNS_TEMPFAIL, "timeout looking up MX for drop.test");
	mx_result_free(w.res);
	dns_free(d);
}
END_TEST

START_TEST(test_no_server_is_tempfail)
{
	/* a port nobody answers on: ICMP refused or a timeout, either temporary */
	char err[128];
	struct dns *d = dns_new(base, "127.0.0.1:9", 200, 1, err, sizeof err);
	ck_assert_msg(d != NULL, "%s", err);
	struct waiter w = { 0 };
	dns_resolve_domain(d, "order.test", on_result, &w);
	run_until(&w.calls, 1, WAIT_MS);
	ck_assert_int_eq(w.calls, 1);
	ck_assert_int_eq(w.res->status, DNS_TEMPFAIL);
	mx_result_free(w.res);
	dns_free(d);
}
END_TEST

START_TEST(test_cancel)
{
	struct waiter slow = { 0 }, lit = { 0 }, lst = { 0 }, other = { 0 };
	struct dns_query *q1 = dns_resolve_domain(dns, "slow.test", on_result, &slow);
	/* answered at once, delivery scheduled: cancelled before the loop runs */
	struct dns_query *q2 = dns_resolve_domain(dns, "[127.0.0.1]", on_result, &lit);
	dns_cancel(q2);
	/* a literal and a name in c-ares */
	struct mx_entry e[] = { { "list1.test", NULL }, { "10.0.0.1", NULL } };
	struct dns_query *q3 = dns_resolve_list(dns, e, 2, on_result, &lst);
	dns_cancel(q3);
	dns_cancel(NULL);
	dns_resolve_domain(dns, "order.test", on_result, &other);
	/* slow.test's answer is 300 ms away: cancelled while dnsd holds it */
	run_until(NULL, 0, 50);
	ck_assert_int_eq(slow.calls, 0);
	dns_cancel(q1);
	run_until(NULL, 0, 600);
	ck_assert_int_eq(slow.calls, 0);
	ck_assert_int_eq(lit.calls, 0);
	ck_assert_int_eq(lst.calls, 0);
	ck_assert_int_eq(other.calls, 1);
	ck_assert_int_eq(other.res->status, DNS_OK);
	mx_result_free(other.res);

	/* after a cancel the resolver still works */
	struct waiter again = { 0 };
	dns_resolve_domain(dns, "slow.test", on_result, &again);
	run_until(&again.calls, 1, WAIT_MS);
	check_result(0, "slow.test", &again, DNS_OK, "mx.slow.test 10 0 127.0.6.1");
	mx_result_free(again.res);
}
END_TEST

START_TEST(test_free_with_outstanding)
{
	struct waiter a = { 0 }, b = { 0 }, c = { 0 };
	struct dns *d = new_dns(2000, 2);
	dns_resolve_domain(d, "slow.test", on_result, &a);
	dns_resolve_domain(d, "[::1]", on_result, &b);
	dns_resolve_domain(d, "order.test", on_result, &c);
	struct dns_query *q = dns_resolve_domain(d, "dual.test", on_result, &c);
	dns_cancel(q);   /* a cancelled query still in c-ares is freed too */
	run_until(NULL, 0, 50);
	dns_free(d);
	run_until(NULL, 0, 400);
	ck_assert_int_eq(a.calls, 0);
	ck_assert_int_eq(b.calls, 1);   /* delivered in the 50 ms */
	mx_result_free(b.res);

	/* freed before anything ran */
	struct waiter e = { 0 };
	d = new_dns(2000, 2);
	dns_resolve_domain(d, "[127.0.0.1]", on_result, &e);
	dns_resolve_domain(d, "order.test", on_result, &e);
	dns_free(d);
	dns_free(NULL);
	run_until(NULL, 0, 100);
	ck_assert_int_eq(e.calls, 0);
	mx_result_free(c.res);
}
END_TEST

struct chain {
	struct dns *d;
	int calls;
	struct mx_result *res[3];   /* owned */
	struct waiter slow;
};

/* starts the next query from within a callback; the second frees the resolver */
static void chain_cb(void *arg, struct mx_result *res)
{
	struct chain *c = arg;
	c->res[c->calls++] = res;
	if (c->calls == 1) {
		ck_assert_ptr_nonnull(dns_resolve_domain(c->d, "dual.test", chain_cb, c));
	} else if (c->calls == 2) {
		dns_resolve_domain(c->d, "slow.test", on_result, &c->slow);
		dns_free(c->d);
		c->d = NULL;
	}
}

START_TEST(test_callbacks_start_and_free)
{
	struct chain c;
	memset(&c, 0, sizeof c);
	c.d = new_dns(2000, 2);
	dns_resolve_domain(c.d, "[10.1.2.3]", chain_cb, &c);
	run_until(&c.calls, 2, WAIT_MS);
	run_until(NULL, 0, 400);
	ck_assert_int_eq(c.calls, 2);
	ck_assert_int_eq(c.slow.calls, 0);
	ck_assert_ptr_null(c.d);
	ck_assert_int_eq(c.res[0]->status, DNS_OK);
	ck_assert_str_eq(c.res[1]->hosts[0].name, "mx.dual.test");
	mx_result_free(c.res[0]);
	mx_result_free(c.res[1]);
}
END_TEST

struct new_case {
	const char *servers;
	int timeout_ms, tries;
	bool ok;
	const char *why;
};

static const struct new_case new_cases[] = {
	{ NULL, 0, 0, true, NULL },
	{ "127.0.0.1", 0, 0, true, NULL },
	{ "127.0.0.1:5353,[::1]:5353", 100, 3, true, NULL },
	{ "", 0, 0, false, "empty" },
	{ "not-an-ip", 0, 0, false, "DNS servers 'not-an-ip'" },
	{ "127.0.0.1", -1, 0, false, "negative" },
	{ "127.0.0.1", 0, -1, false, "negative" },
};

START_TEST(test_new)
{
	const struct new_case *c = &new_cases[_i];
	char err[256] = "";
	struct dns *d = dns_new(base, c->servers, c->timeout_ms, c->tries, err, sizeof err);
	if (c->ok) {
		ck_assert_msg(d != NULL, "row %d: %s", _i, err);
		dns_free(d);
		return;
	}
	ck_assert_msg(d == NULL, "row %d: dns_new succeeded", _i);
	ck_assert_msg(strstr(err, c->why) != NULL, "row %d: error \"%s\" lacks \"%s\"", _i, err,
		      c->why);
}
END_TEST

START_TEST(test_new_without_base)
{
	char err[64] = "";
	ck_assert_ptr_null(dns_new(NULL, NULL, 0, 0, err, sizeof err));
	ck_assert_ptr_nonnull(strstr(err, "event base"));
	ck_assert_ptr_null(dns_resolve_domain(NULL, "order.test", on_result, NULL));
	ck_assert_ptr_null(dns_resolve_domain(dns, "order.test", NULL, NULL));
	mx_result_free(NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("qmgr_dns");

	TCase *tp = tcase_create("parse");
	tcase_add_loop_test(tp, test_parse, 0, (int)(sizeof parse_cases / sizeof parse_cases[0]));
	tcase_add_test(tp, test_parse_long);
	suite_add_tcase(s, tp);

	TCase *tr = tcase_create("resolve");
	tcase_set_timeout(tr, 60);
	tcase_add_unchecked_fixture(tr, dnsd_start, dnsd_stop);
	tcase_add_checked_fixture(tr, setup, teardown);
	tcase_add_loop_test(tr, test_domain, 0, (int)(sizeof domain_cases / sizeof domain_cases[0]));
	tcase_add_test(tr, test_domain_too_long);
	tcase_add_loop_test(tr, test_list, 0, (int)(sizeof list_cases / sizeof list_cases[0]));
	tcase_add_test(tr, test_equal_preference_random);
	tcase_add_test(tr, test_many_mx_over_tcp);
	tcase_add_test(tr, test_timeout_is_tempfail);
	tcase_add_test(tr, test_no_server_is_tempfail);
	tcase_add_test(tr, test_cancel);
	tcase_add_test(tr, test_free_with_outstanding);
	tcase_add_test(tr, test_callbacks_start_and_free);
	tcase_add_loop_test(tr, test_new, 0, (int)(sizeof new_cases / sizeof new_cases[0]));
	tcase_add_test(tr, test_new_without_base);
	suite_add_tcase(s, tr);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return (failed == 0 && !dnsd_bad_exit) ? EXIT_SUCCESS : EXIT_FAILURE;
}
