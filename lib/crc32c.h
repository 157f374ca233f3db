/* CRC-32C (Castagnoli), used by the spool trailers. */
#ifndef KUMO_CRC32C_H
#define KUMO_CRC32C_H
#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
