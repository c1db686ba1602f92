/*
 * size.c - byte sizes as people type and read them.
 *
 * Parsing accepts a run of decimal digits, then optionally one multiplier
 * letter K, M, G or T (binary: 2^10, 2^20, 2^30, 2^40), then optionally "B"
 * or, after a multiplier, "iB"; all case-insensitive ("64m", "64MiB",
 * "64mb", "4096b"). Nothing else is a size: no sign, no spaces, no
 * fraction, no empty string, no suffix without digits. Values that do not
 * fit in 64 bits are -EINVAL rather than silently wrapped, because a
 * wrapped max_memory would be a very different budget from the one asked.
 *
 * Formatting picks the largest binary unit in which the value is at least 1
 * and prints one decimal ("64.0 MiB"); below 1 KiB it prints whole bytes
 * ("512 B"). Only integer arithmetic is used, so output is exact and
 * reproducible.
 */
#include "apbundle/size.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Binary shift for a multiplier letter, or -1 if c is not one. */
static int multiplier_shift(char c)
{
	switch (tolower((unsigned char)c)) {
	case 'k': return 10;
	case 'm': return 20;
	case 'g': return 30;
	case 't': return 40;
	default: return -1;
	}
}

/* Is s (what follows the digits and the multiplier) an allowed unit tail? */
static int valid_tail(const char *s, int has_multiplier)
{
	if (s[0] == '\0')
		return 1;
	if ((s[0] == 'b' || s[0] == 'B') && s[1] == '\0')
		return 1;
	return has_multiplier && strcasecmp(s, "ib") == 0;
}

int apb_size_parse(const char *s, uint64_t *bytes)
{
	uint64_t v = 0;
	int shift = 0;
	const char *p = s;

	if (!s || !isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		uint64_t d = (uint64_t)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	if (*p && multiplier_shift(*p) >= 0)
		shift = multiplier_shift(*p++);
	if (!valid_tail(p, shift > 0))
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*bytes = v << shift;
	return 0;
}

char *apb_size_format(uint64_t bytes, char *out, size_t out_len)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB",
					    "EiB"};
	const size_t nunits = sizeof(units) / sizeof(units[0]);
	uint64_t unit = 1024, tenths;
	size_t u = 0;

	if (bytes < 1024) {
		snprintf(out, out_len, "%llu B", (unsigned long long)bytes);
		return out;
	}
	while (u + 1 < nunits && bytes / unit >= 1024) {
		unit <<= 10;
		u++;
	}
	/* Rounded tenths of a unit; neither term can overflow for unit <= 2^60. */
	tenths = bytes / unit * 10 + ((bytes % unit) * 10 + unit / 2) / unit;
	/* 1023.96 KiB rounds to 1024.0: say 1.0 MiB instead. */
	if (tenths >= 10240 && u + 1 < nunits) {
		unit <<= 10;
		u++;
		tenths = bytes / unit * 10 + ((bytes % unit) * 10 + unit / 2) / unit;
	}
	snprintf(out, out_len, "%llu.%llu %s", (unsigned long long)(tenths / 10),
		 (unsigned long long)(tenths % 10), units[u]);
	return out;
}
