/* jsonr: a strict JSON reader (RFC 8259) that builds the same cJSON trees as
 * cJSON's parser, for the frames of every internal socket (lib/frame.c),
 * which are read once per policy call and per queue manager notice.
 *
 * It takes exactly one document from p[0..n), with only white space (space,
 * tab, CR, LF) around it, and refuses what cJSON's parser takes:
 *  - a byte below 0x20 outside a string but white space, and any byte below
 *    0x20 inside one (cJSON takes them for white space, or keeps them);
 *  - number forms JSON has not: "+1", "01", "1.", ".5", "1e";
 *  - a number beyond a double (1e999 would be infinity, which JSON cannot
 *    write back);
 *  - an object with a key twice (our readers would see only the first);
 *  - a lone or unpaired UTF-16 surrogate in a \u escape;
 *  - nesting deeper than CJSON_NESTING_LIMIT (1000), as cJSON.
 * "\u0000" decodes to a NUL byte, which ends the C string, as in cJSON.
 * Numbers are read in the C locale whatever a policy set with os.setlocale.
 * Nodes and strings come from xmalloc; cJSON_Delete frees them with free(),
 * as every cJSON hook set in this tree does. */
#ifndef KUMO_JSONR_H
#define KUMO_JSONR_H
#include <stddef.h>
#include <cjson/cJSON.h>

/* The document, or NULL with why in err: "control byte 0x.. in the frame",
 * "a key appears twice in one object", "a number is out of range", or
 * "not valid JSON" followed by what and the offset. */
cJSON *jsonr_parse(const char *p, size_t n, char *err, size_t errlen);

/* For text kept from before (a message's meta in the spool or in memory):
 * jsonr_parse, and where it refuses, cJSON_ParseWithLength, so that what
 * cJSON's parser took before is still taken.  Both give the same tree for
 * a document both take.  NULL if neither takes it. */
cJSON *jsonr_parse_any(const char *p, size_t n);

#endif
