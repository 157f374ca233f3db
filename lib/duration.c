/* duration: durations as KumoMTA's configuration accepts them (humantime
 * through duration-serde): "5m", "1 minute", "1h 30m", "1.5s", or a plain
 * number of seconds ("30", "1.5").  Units are case-sensitive ("M" is a
 * month, "m" a minute); spaces may stand around the whole string, between
 * terms and between a number and its unit.
 * Entry point: duration_parse.
 * It returns -1 with a reason for an empty string, a sign, a number without
 * a unit among several terms, an unknown unit, trailing text, or a total too
 * large (over 1e12 s, so that callers may keep microseconds in an
 * int64_t); it never logs. */
#include "lib/duration.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ~31,700 years: still fits an int64_t count of microseconds */
#define DURATION_MAX_SECS 1e12

struct unit {
	const char *name;
	double secs;
};

static const struct unit units[] = {
	{ "ns", 1e-9 }, { "nsec", 1e-9 }, { "nanos", 1e-9 },
	{ "us", 1e-6 }, { "usec", 1e-6 }, { "micros", 1e-6 },
	{ "ms", 1e-3 }, { "msec", 1e-3 }, { "millis", 1e-3 },
	{ "s", 1 }, { "sec", 1 }, { "secs", 1 }, { "second", 1 }, { "seconds", 1 },
	{ "m", 60 }, { "min", 60 }, { "mins", 60 }, { "minute", 60 }, { "minutes", 60 },
	{ "h", 3600 }, { "hr", 3600 }, { "hrs", 3600 }, { "hour", 3600 }, { "hours", 3600 },
	{ "d", 86400 }, { "day", 86400 }, { "days", 86400 },
	{ "w", 604800 }, { "week", 604800 }, { "weeks", 604800 },
	{ "M", 2630016 }, { "month", 2630016 }, { "months", 2630016 },     /* 30.44 d */
	{ "y", 31557600 }, { "year", 31557600 }, { "years", 31557600 },   /* 365.25 d */
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* digits ["." digits] at *p; locale-independent, unlike strtod */
static int parse_number(const char **p, double *v)
{
	const char *s = *p;
	double n = 0, scale = 1;
	if (!is_digit(*s))
		return -1;
	while (is_digit(*s))
		n = n * 10 + (*s++ - '0');
	if (*s == '.') {
		s++;
		if (!is_digit(*s))
			return -1;
		while (is_digit(*s)) {
			n = n * 10 + (*s++ - '0');
			scale *= 10;
		}
	}
	*v = n / scale;
	*p = s;
	return 0;
}

static const struct unit *find_unit(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
		if (strlen(units[i].name) == len && memcmp(units[i].name, name, len) == 0)
			return &units[i];
	return NULL;
}

int duration_parse(const char *s, double *secs, char *err, size_t errlen)
{
	if (!s) {
		snprintf(err, errlen, "empty duration");
		return -1;
	}
	const char *p = s;
	while (is_space(*p))
		p++;
	if (*p == '\0') {
		snprintf(err, errlen, "empty duration");
		return -1;
	}
	if (*p == '-' || *p == '+') {
		snprintf(err, errlen, "a duration cannot have a sign");
		return -1;
	}
	double total = 0;
	int terms = 0;
	while (*p) {
		double v;
		if (parse_number(&p, &v) != 0) {
			snprintf(err, errlen, "expected a number at offset %zu", (size_t)(p - s));
			return -1;
		}
		while (is_space(*p))
			p++;
		const char *u = p;
		while (is_letter(*p))
			p++;
		size_t ulen = (size_t)(p - u);
		if (ulen == 0) {
			if (*p == '\0' && terms == 0) {
				total = v; /* a plain number of seconds */
				break;
			}
			snprintf(err, errlen, "missing unit at offset %zu", (size_t)(u - s));
			return -1;
		}
		const struct unit *un = find_unit(u, ulen);
		if (!un) {
			snprintf(err, errlen, "unknown unit '%.*s'", ulen > 16 ? 16 : (int)ulen, u);
			return -1;
		}
		total += v * un->secs;
		terms++;
		while (is_space(*p))
			p++;
	}
	if (!isfinite(total) || total > DURATION_MAX_SECS) {
		snprintf(err, errlen, "duration too large");
		return -1;
	}
	*secs = total;
	return 0;
}
