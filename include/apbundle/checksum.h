/*
 * checksum.h - XXH3-64 checksums and their manifest spelling
 * "xxh3-64:<16 lower-case hex digits>".
 */
#ifndef APBUNDLE_CHECKSUM_H
#define APBUNDLE_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_CHECKSUM_PREFIX "xxh3-64:"
#define APB_CHECKSUM_STRLEN 24 /* prefix + 16 hex digits, without NUL */

/* Write "xxh3-64:%016x" into out (at least APB_CHECKSUM_STRLEN + 1 bytes). */
APB_API
void apb_checksum_format(uint64_t xxh3, char *out);

/* Parse the manifest spelling; returns 0 or -EINVAL. */
APB_API
int apb_checksum_parse(const char *s, uint64_t *xxh3);

/*
 * XXH3-64 of len bytes of file fd starting at offset, streamed through a
 * bounded buffer. progress (may be NULL) is called with bytes done so far.
 * Returns 0, -EIO if the file ends early, or a negative read errno.
 */
APB_API
int apb_checksum_fd(int fd, uint64_t offset, uint64_t len, uint64_t *xxh3,
		    void (*progress)(void *arg, uint64_t done), void *arg);

#ifdef __cplusplus
}
#endif

#endif
