/* Durations as KumoMTA accepts them (humantime / duration-serde): a number of
 * seconds, or a string of one or more "<number><unit>" terms separated by
 * optional spaces: "1 minute", "5m", "20 minutes", "1h 30m", "300s", "1.5s".
 * Units: ns nsec nanos, us usec micros, ms msec millis, s sec secs second
 * seconds, m min mins minute minutes, h hr hrs hour hours, d day days,
 * w week weeks, M month months (30.44 d), y year years (365.25 d). */
#ifndef KUMO_DURATION_H
#define KUMO_DURATION_H
#include <stddef.h>

/* 0 on success (*secs set, >= 0); -1 with a reason. */
int duration_parse(const char *s, double *secs, char *err, size_t errlen);

#endif
