/*
 * checksum.c - XXH3-64 checksums of model bytes and their manifest spelling.
 *
 * The manifest spells a checksum "xxh3-64:" followed by exactly 16 lower-case
 * hex digits (docs/FORMAT.md). Parsing is strict: anything else (upper case,
 * fewer or more digits, trailing bytes, another prefix) is -EINVAL, so one
 * checksum has one spelling and bundles compare byte for byte.
 *
 * apb_checksum_fd() streams a byte range of a file through one bounded
 * buffer and an XXH3 streaming state, so memory use does not depend on the
 * model's size. It reads with pread() and never moves the file offset, so
 * it may share a descriptor with other readers.
 */
#include "apbundle/checksum.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#define HASH_BUF_BYTES (1u << 20)
#define HEX_DIGITS 16

void apb_checksum_format(uint64_t xxh3, char *out)
{
	snprintf(out, APB_CHECKSUM_STRLEN + 1, "%s%016llx", APB_CHECKSUM_PREFIX,
		 (unsigned long long)xxh3);
}

/* Value of a lower-case hex digit, or -1: upper case is not the spelling. */
static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int apb_checksum_parse(const char *s, uint64_t *xxh3)
{
	size_t plen = strlen(APB_CHECKSUM_PREFIX);
	uint64_t v = 0;

	if (!s || strncmp(s, APB_CHECKSUM_PREFIX, plen) != 0)
		return -EINVAL;
	s += plen;
	for (int i = 0; i < HEX_DIGITS; i++) {
		int d = hex_value(s[i]);

		if (d < 0) /* also stops at the NUL of a short string */
			return -EINVAL;
		v = (v << 4) | (uint64_t)d;
	}
	if (s[HEX_DIGITS] != '\0')
		return -EINVAL;
	*xxh3 = v;
	return 0;
}

int apb_checksum_fd(int fd, uint64_t offset, uint64_t len, uint64_t *xxh3,
		    void (*progress)(void *arg, uint64_t done), void *arg)
{
	XXH3_state_t *st = NULL;
	unsigned char *buf = NULL;
	uint64_t done = 0;
	int rc = 0;

	st = XXH3_createState();
	buf = malloc(HASH_BUF_BYTES);
	if (!st || !buf) {
		rc = -ENOMEM;
		goto out;
	}
	XXH3_64bits_reset(st);

	while (done < len) {
		uint64_t left = len - done;
		size_t want = left < HASH_BUF_BYTES ? (size_t)left : HASH_BUF_BYTES;
		ssize_t n = pread(fd, buf, want, (off_t)(offset + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out;
		}
		if (n == 0) { /* file shorter than the range we were promised */
			rc = -EIO;
			goto out;
		}
		XXH3_64bits_update(st, buf, (size_t)n);
		done += (uint64_t)n;
		if (progress)
			progress(arg, done);
	}
	*xxh3 = XXH3_64bits_digest(st);
out:
	free(buf);
	XXH3_freeState(st);
	return rc;
}
