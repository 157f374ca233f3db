/* TOML v1.0.0 (https://toml.io/en/v1.0.0) to and from cJSON, for the
 * listener-parameter files and any other TOML configuration KumoMTA reads
 * (kumo.toml_load, kumo.serde.toml_parse / toml_encode / toml_encode_pretty).
 *
 * Mapping between the two:
 *   table, inline table  <-> cJSON object
 *   array, array of tables <-> cJSON array
 *   string               <-> cJSON string
 *   boolean              <-> cJSON true / false
 *   integer              ->  cJSON number (a double).  Integers are range
 *                            checked as 64-bit signed values, but beyond
 *                            +-2^53 they lose precision in the double.
 *   float                <-> cJSON number; inf, -inf and nan become the
 *                            IEEE values (cJSON_Print writes them as null)
 *   offset date-time, local date-time, local date, local time
 *                        ->  cJSON string holding the exact source text,
 *                            validated (ranges, leap years) but not
 *                            normalised: "1979-05-27 07:32:00Z" stays as it
 *                            is.  They are encoded back as plain strings.
 *
 * Choices where the spec leaves room, or where cJSON cannot follow:
 *   - nothing in the tree may be nested deeper than TOML_MAX_DEPTH (the root
 *     table is depth 0; each table, array or array-of-tables level adds
 *     one); the parser rejects deeper input and the encoder deeper trees;
 *   - a string or key holding U+0000 is rejected: cJSON strings end at NUL;
 *   - a float literal too large for a double ("1e400") is an error, not inf;
 *   - a leading UTF-8 byte order mark is skipped; seconds may be 60 (leap);
 *   - CRLF inside multi-line strings becomes LF;
 *   - dotted keys may fill a table that a [x.y.z] header only implied (as
 *     tomllib and toml_edit allow), which then cannot get a [x.y] header;
 *   - numbers are read and written in the "C" locale whatever the process
 *     locale (uselocale around each call). */
#ifndef KUMO_TOML_H
#define KUMO_TOML_H
#include <stddef.h>
#include <cjson/cJSON.h>

#define TOML_MAX_DEPTH 128

/* Parse len bytes of TOML (need not be NUL-terminated).  Returns a new cJSON
 * object (free with cJSON_Delete), or NULL with "line N: reason" in err. */
cJSON *toml_parse(const char *text, size_t len, char *err, size_t errlen);

/* Encode an object as TOML: simple keys first, then [sub.tables] and
 * [[arrays.of.tables]].  pretty adds a blank line before each section and
 * puts long arrays one element per line.  Returns a malloc'd string (free
 * with free()), or NULL with a reason in err: the root is not an object, a
 * null ("null has no TOML form"), a raw cJSON item, a duplicate key, a string
 * or key that is not valid UTF-8, or nesting deeper than TOML_MAX_DEPTH.
 * toml_parse(toml_encode(x)) equals x for every other object. */
char *toml_encode(const cJSON *root, int pretty, char *err, size_t errlen);

#endif
