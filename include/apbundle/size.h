/*
 * size.h - parse and print byte sizes with K, M, G (and T) suffixes,
 * binary multiples: "64M" is 64 * 2^20.
 */
#ifndef APBUNDLE_SIZE_H
#define APBUNDLE_SIZE_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parse "123", "4K", "64M", "2G" (case-insensitive, optional "iB"/"B").
 * Returns 0, or -EINVAL for anything else or a value that overflows. */
APB_API
int apb_size_parse(const char *s, uint64_t *bytes);

/* Human form for messages: "64.0 MiB". Returns out. */
APB_API
char *apb_size_format(uint64_t bytes, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif
