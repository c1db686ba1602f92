/*
 * name.c - the model name rules of docs/USAGE.md ("Names"), one
 * implementation shared by the packer (refuse to write) and the reader
 * (refuse to mount).
 *
 * A name becomes a path in the mounted tree, so the rules are what keeps a
 * hostile bundle from escaping or shadowing it:
 *   - relative: no leading '/', no trailing '/', no empty component ("a//b");
 *   - no "." or ".." component;
 *   - no NUL and no control byte (< 0x20, 0x7f): they break shells, logs and
 *     the C strings everything else uses;
 *   - valid UTF-8, strictly: no overlong forms, no surrogates (U+D800..DFFF),
 *     nothing above U+10FFFF;
 *   - at most APB_NAME_MAX bytes in all, APB_COMPONENT_MAX per component
 *     (NAME_MAX of common file systems);
 *   - the first component is not a reserved root entry (.stats, .metrics,
 *     .control), so "a model" can never stand in for the daemon's files,
 *     not even as a directory (".stats/x").
 * A set of names must in addition be free of duplicates and of a name that
 * is both a file and a directory ("a" and "a/b/c").
 *
 * Checks run in a fixed order (shape, bytes, components) so that a name
 * breaking several rules always gets the same message.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#include "apbundle/name.h"
#include "error.h"

const char *const apb_reserved_names[APB_NRESERVED] = {
	[APB_RESERVED_STATS] = ".stats",
	[APB_RESERVED_METRICS] = ".metrics",
	[APB_RESERVED_CONTROL] = ".control",
};

/*
 * Length of the valid UTF-8 sequence at s (at most left bytes), or 0 if the
 * bytes there are not one. The lead-byte ranges follow RFC 3629 table 3-7:
 * narrowing the second byte's range for E0, ED, F0 and F4 is what rules out
 * overlongs, surrogates and code points above U+10FFFF.
 */
static size_t utf8_seq_len(const unsigned char *s, size_t left)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (left < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

static bool is_control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/*
 * Whether the valid n-byte UTF-8 sequence at u is one a terminal may act
 * on or that changes how the rest of the line reads, although names may
 * hold it: C1 controls U+0080..U+009F (U+009B is CSI on terminals that
 * take 8-bit controls), the bidirectional marks and overrides U+200E,
 * U+200F, U+202A..U+202E and U+2066..U+2069, and the line and paragraph
 * separators U+2028, U+2029.
 */
static bool is_hidden_control(const unsigned char *u, size_t n)
{
	if (n == 2)
		return u[0] == 0xc2 && u[1] < 0xa0;
	if (n != 3 || u[0] != 0xe2)
		return false;
	if (u[1] == 0x80)
		return u[2] == 0x8e || u[2] == 0x8f ||
		       (u[2] >= 0xa8 && u[2] <= 0xae);
	return u[1] == 0x81 && u[2] >= 0xa6 && u[2] <= 0xa9;
}

const char *apb_name_quote(const char *s, size_t len, char *buf,
			   size_t buf_len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t o = 0, i = 0;

	if (!buf_len)
		return buf;
	/* Room for "..." and the NUL is kept back from the start. */
	while (i < len) {
		size_t n = utf8_seq_len(u + i, len - i), tn = 0;
		char tmp[3 * 4 + 1];

		if (n == 0 || (n == 1 && is_control(u[i]))) {
			n = 1;
		} else if (n == 1 && u[i] == '\\') {
			/* Doubled, so that "\\x1b" can only be a name's
			 * own backslash and never an escape. */
			memcpy(tmp, "\\\\", 2);
			tn = 2;
		} else if (!is_hidden_control(u + i, n)) {
			memcpy(tmp, s + i, n);
			tn = n;
		}
		if (tn == 0) /* not copied: every byte as \xNN */
			for (size_t k = 0; k < n; k++, tn += 4)
				snprintf(tmp + tn, sizeof tmp - tn, "\\x%02x",
					 u[i + k]);
		if (o + tn + 4 > buf_len) {
			if (o + 4 <= buf_len) {
				memcpy(buf + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(buf + o, tmp, tn);
		o += tn;
		i += n;
	}
	buf[o] = '\0';
	return buf;
}

/* "name '<quoted>': <detail>". The quoting is only paid on failure. */
__attribute__((format(printf, 5, 6))) static int
name_err(const char *name, size_t len, char *err, size_t err_len,
	 const char *fmt, ...)
{
	char q[APB_QUOTE_MAX], detail[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	return apb_errf(err, err_len, "name '%s': %s",
			apb_name_quote(name, len, q, sizeof q), detail);
}

/* Bytes: NUL, control characters, UTF-8. */
static int check_bytes(const char *name, size_t len, char *err,
		       size_t err_len)
{
	const unsigned char *u = (const unsigned char *)name;

	for (size_t i = 0; i < len;) {
		size_t n;

		if (u[i] == 0)
			return name_err(name, len, err, err_len,
					"contains a NUL byte at byte %zu", i);
		if (is_control(u[i]))
			return name_err(name, len, err, err_len,
					"contains control character 0x%02x at byte %zu",
					u[i], i);
		n = utf8_seq_len(u + i, len - i);
		if (n == 0)
			return name_err(name, len, err, err_len,
					"invalid UTF-8 at byte %zu", i);
		i += n;
	}
	return 0;
}

static bool is_reserved_root(const char *c, size_t clen)
{
	for (size_t i = 0; i < APB_NRESERVED; i++)
		if (strlen(apb_reserved_names[i]) == clen &&
		    memcmp(apb_reserved_names[i], c, clen) == 0)
			return true;
	return false;
}

/* The component name[start..start+clen). */
static int check_component(const char *name, size_t len, size_t start,
			   size_t clen, char *err, size_t err_len)
{
	const char *c = name + start;
	char cq[APB_QUOTE_MAX];

	if (clen == 0)
		return name_err(name, len, err, err_len, "empty component");
	if ((clen == 1 && c[0] == '.') ||
	    (clen == 2 && c[0] == '.' && c[1] == '.'))
		return name_err(name, len, err, err_len,
				"component '%.*s' is not allowed", (int)clen,
				c);
	if (clen > APB_COMPONENT_MAX)
		return name_err(name, len, err, err_len,
				"component '%s' is %zu bytes, more than the limit of %d",
				apb_name_quote(c, clen, cq, 40), clen,
				APB_COMPONENT_MAX);
	if (start == 0 && is_reserved_root(c, clen))
		return name_err(name, len, err, err_len,
				"'%.*s' is reserved at the root", (int)clen, c);
	return 0;
}

int apb_name_check(const char *name, size_t len, char *err, size_t err_len)
{
	size_t start = 0;
	int rc;

	if (len == 0)
		return apb_errf(err, err_len, "name is empty");
	if (len > APB_NAME_MAX)
		return name_err(name, len, err, err_len,
				"%zu bytes, more than the limit of %d", len,
				APB_NAME_MAX);
	if (name[0] == '/')
		return name_err(name, len, err, err_len,
				"must be relative (starts with '/')");
	if (name[len - 1] == '/')
		return name_err(name, len, err, err_len, "ends with '/'");
	rc = check_bytes(name, len, err, err_len);
	if (rc)
		return rc;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && name[i] != '/')
			continue;
		rc = check_component(name, len, start, i - start, err,
				     err_len);
		if (rc)
			return rc;
		start = i + 1;
	}
	return 0;
}

/*
 * strcmp() of s against the string dir + "/", without building it. Names
 * beginning with "dir/" compare equal; this orders like strcmp() would.
 */
static int cmp_dir_prefix(const char *s, const char *dir, size_t dlen)
{
	int r = strncmp(s, dir, dlen);

	if (r)
		return r;
	return (int)(unsigned char)s[dlen] - (int)'/';
}

/*
 * Index of the first name in sorted[lo..n) not below dir + "/", in
 * O(log n). Names below "dir/" sort after "dir" but not right after it:
 * "dir-x" and "dir.txt" ('-' and '.' sort before '/') can sit in between,
 * which is why a neighbours-only check would miss collisions.
 */
static size_t lower_bound_dir(const char *const *sorted, size_t lo, size_t n,
			      const char *dir, size_t dlen)
{
	size_t hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (cmp_dir_prefix(sorted[mid], dir, dlen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int apb_names_check_set(const char *const *sorted, size_t n, char *err,
			size_t err_len)
{
	char qa[APB_QUOTE_MAX], qb[APB_QUOTE_MAX];

	for (size_t i = 0; i + 1 < n; i++) {
		int r = strcmp(sorted[i], sorted[i + 1]);

		if (r == 0)
			return apb_errf(err, err_len, "duplicate name '%s'",
					apb_name_quote(sorted[i], strlen(sorted[i]),
						       qa, sizeof qa));
		if (r > 0)
			return apb_errf(err, err_len,
					"names are not sorted: '%s' before '%s'",
					apb_name_quote(sorted[i], strlen(sorted[i]),
						       qa, sizeof qa),
					apb_name_quote(sorted[i + 1],
						       strlen(sorted[i + 1]), qb,
						       sizeof qb));
	}
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(sorted[i]), j;

		/* Names that begin with sorted[i] follow it as one block, so
		 * if the next one does not, no name is below "sorted[i]/". */
		if (i + 1 == n || strncmp(sorted[i + 1], sorted[i], len) != 0)
			continue;
		j = lower_bound_dir(sorted, i + 1, n, sorted[i], len);

		if (j < n && cmp_dir_prefix(sorted[j], sorted[i], len) == 0)
			return apb_errf(err, err_len,
					"names '%s' and '%s': '%s' is both a file and a directory",
					apb_name_quote(sorted[i], len, qa, sizeof qa),
					apb_name_quote(sorted[j], strlen(sorted[j]),
						       qb, sizeof qb),
					qa);
	}
	return 0;
}
