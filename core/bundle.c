/*
 * bundle.c - open, validate and read an .apbundle file.
 *
 * Opening is a pipeline that trusts nothing until the end:
 *
 *   1. fixed header: at least 16 bytes, magic "APBUNDLE", u32 LE version.
 *      Versions 1 and 2 are read; anything else is refused by number.
 *      Version 2 has one layout: byte 16 must be '{' (JSON manifest, u32
 *      length), then its chunk table is read and checksummed (v2.c).
 *   2. layout: byte 16 is '{' for the JSON manifest of docs/FORMAT.md
 *      "Version 1" (and a file
 *      of exactly 16 bytes is judged as that layout, so its error speaks
 *      of the JSON manifest); otherwise bytes 16..19 must be zero (the high
 *      half of aprender's u64 manifest length) and the file is aprender's
 *      binary layout (aprender.c); with non-zero bytes there it is neither,
 *      and the error says the manifest must begin with '{'. Each layout's
 *      parser turns its manifest into a common table (struct apb_manifest,
 *      format.h).
 *   3. checks every layout shares (finish_models): each model's data starts
 *      after the manifest and, with overflow-safe arithmetic, ends inside
 *      the file; the name set has no duplicate and no file that is also a
 *      directory; no two non-empty models share a byte. Version 2 then
 *      checks every chunk table entry against its model (v2.c lists the
 *      rules: flags, alignment, lengths, order, containment, coverage).
 *   4. models are sorted by name (strcmp order); index = identity.
 *
 * Version 1 JSON manifest rules, beyond the shape in docs/FORMAT.md:
 *   - the manifest is one JSON object; whitespace may follow it, nothing else;
 *     it is read by json.c (RFC 8259, at most 1000 levels deep, no tree);
 *   - "model_count" and every "offset"/"size" must be exact non-negative
 *     integers. Numbers are read as doubles, so a value is accepted only
 *     if it is integral and at most 2^53 - 1: above that a double no longer
 *     tells neighbouring integers apart, and such values are rejected as
 *     "not an exact integer";
 *   - "checksum" is required and must be "xxh3-64:" + 16 lower-case hex;
 *   - every offset, of empty models too, is a multiple of 4096 and not
 *     inside the header or manifest;
 *   - a known key that appears twice in one object is an error (JSON tools
 *     disagree on which copy wins); unknown keys are ignored;
 *   - no string may contain a NUL, raw or escaped ("\u0000"): C strings
 *     would end there and "a\u0000b" would be read as the name "a".
 *
 * Version 2 manifest rules, in addition (docs/FORMAT.md):
 *   - the top level has "chunk_table": {"offset", "count", "checksum"},
 *     exact integers and an "xxh3-64:" checksum as above;
 *   - every model also has "stored_size", "compression" ("none" or "zstd";
 *     anything else is refused by name), "chunk_size" (a multiple of 4096
 *     in 4096 .. 16 MiB) and "first_chunk"; an empty model stores 0 bytes;
 *   - model offsets need not be aligned: raw chunks are (v2.c), frames of
 *     a "zstd" model may start anywhere;
 *   - keys of version 2 inside a version 1 manifest are unknown keys:
 *     ignored, as before.
 *
 * Cost: O(n log n) in the number of models (one sort by name, one by
 * offset, binary searches for the name set); allocations are bounded by
 * APB_MANIFEST_MAX and APB_MODELS_MAX before they are made, and a JSON
 * manifest costs one pool for its names besides the models.
 *
 * Thread safety: a bundle never changes after open (apb_bundle_direct_io()
 * included, which is called before sharing); reads use pread() on its
 * descriptors, so any number of threads may share it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"
#include "format.h"
#include "json.h"

#define READV_BATCH 64 /* iovecs per preadv(), on the stack */
/* Cap on the values of a JSON manifest: 16 per model at APB_MODELS_MAX.
 * It bounded the parse tree of the JSON library once used (the 2-byte "0,"
 * would have made 10 GiB of tree of a 256 MiB manifest); it stays a rule of
 * the format (docs/FORMAT.md). */
#define JSON_VALUES_MAX (16u << 20)

struct apb_bundle {
	int fd;                   /* O_RDONLY | O_CLOEXEC, closed by close() */
	int dfd;                  /* the same file with O_DIRECT, or -1 */
	enum apb_layout layout;
	struct stat st;           /* taken once at open */
	struct apb_model *models; /* count entries, sorted by name */
	size_t count;
	char *names;              /* pool the model names point into */
	struct apb_chunk_entry *chunks; /* version 2: the chunk table */
	uint64_t chunk_count;
	struct apb_v2_reader *reader;   /* version 2: scratch, zstd contexts */
};

/* ---- small shared helpers (format.h) ---------------------------------- */

/* Fill iov[*i] from byte *skip on, and the entries after it, with at most
 * want bytes, into v (at most READV_BATCH entries, none empty). Returns the
 * number of entries. */
static int readv_batch(const struct iovec *iov, int iovcnt, int i, size_t skip,
		       size_t want, struct iovec *v)
{
	int n = 0;

	for (; i < iovcnt && n < READV_BATCH && want > 0; i++, skip = 0) {
		size_t len = iov[i].iov_len - skip;

		if (len == 0)
			continue;
		if (len > want)
			len = want;
		v[n].iov_base = (char *)iov[i].iov_base + skip;
		v[n].iov_len = len;
		want -= len;
		n++;
	}
	return n;
}

/* Read exactly want bytes at pos into iov from byte skip of iov[0] on,
 * resuming after short reads and EINTR. Returns want or a negative errno. */
static long preadv_full(int fd, uint64_t pos, const struct iovec *iov,
			int iovcnt, size_t skip, size_t want)
{
	struct iovec v[READV_BATCH];
	size_t done = 0; /* skip: bytes of iov[i] already read or passed */
	int i = 0;

	while (done < want) {
		ssize_t r;
		int n;

		for (; i < iovcnt && skip >= iov[i].iov_len; i++)
			skip -= iov[i].iov_len;
		n = readv_batch(iov, iovcnt, i, skip, want - done, v);
		r = preadv(fd, v, n, (off_t)(pos + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		done += (size_t)r;
		skip += (size_t)r;
	}
	return (long)done;
}

int apb_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	struct iovec v = {.iov_base = buf, .iov_len = len};
	long r = preadv_full(fd, off, &v, 1, 0, len);

	return r < 0 ? (int)r : 0;
}

int apb_manifest_read(const struct apb_source *src, uint64_t off, uint64_t len,
		      uint8_t **out, char *err, size_t err_len)
{
	uint8_t *buf;
	int rc;

	*out = NULL;
	if (len == 0)
		return apb_errf(err, err_len, "manifest length is 0");
	if (len > APB_MANIFEST_MAX)
		return apb_errf(err, err_len,
				"manifest length %llu exceeds the limit of %u bytes",
				(unsigned long long)len, APB_MANIFEST_MAX);
	if (off > src->file_size || len > src->file_size - off)
		return apb_errf(err, err_len,
				"manifest (%llu bytes at offset %llu) runs past end of file (%llu bytes)",
				(unsigned long long)len, (unsigned long long)off,
				(unsigned long long)src->file_size);
	buf = malloc((size_t)len + 1);
	if (!buf)
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for the manifest");
	rc = apb_pread_full(src->fd, buf, (size_t)len, off);
	if (rc) {
		free(buf);
		return apb_fail(rc, err, err_len, "cannot read the manifest: %s",
				strerror(-rc));
	}
	buf[len] = '\0';
	*out = buf;
	return 0;
}

void apb_manifest_free(struct apb_manifest *m)
{
	free(m->models);
	free(m->names);
	free(m->chunks);
	memset(m, 0, sizeof *m);
}

/* ---- versions 1 and 2: the JSON manifest ------------------------------ */

/* What a message is about; rendered only when there is a message. */
struct where {
	const char *name; /* the model's name, once known */
	size_t i;         /* its index in "models", or TOP_LEVEL */
};

#define TOP_LEVEL SIZE_MAX
#define IN_TABLE (SIZE_MAX - 1)
#define TABLE ((struct where){NULL, IN_TABLE})
#define WHERE_MAX (APB_QUOTE_MAX + 16)

/* "manifest", "chunk_table", "models[i]" (before the name is known) or
 * "model 'x'". */
static const char *where_str(struct where w, char *buf)
{
	char q[APB_QUOTE_MAX];

	if (w.name)
		snprintf(buf, WHERE_MAX, "model '%s'",
			 apb_name_quote(w.name, strlen(w.name), q, sizeof q));
	else if (w.i == TOP_LEVEL)
		snprintf(buf, WHERE_MAX, "manifest");
	else if (w.i == IN_TABLE)
		snprintf(buf, WHERE_MAX, "chunk_table");
	else
		snprintf(buf, WHERE_MAX, "models[%zu]", w.i);
	return buf;
}

/*
 * Find the keys[] members of object obj, vals[k] = NULL if absent; *end
 * (when not NULL): where obj ends. A key seen twice is an error: JSON
 * tools disagree on which copy wins.
 */
static int pick_keys(const char *obj, const char *const *keys,
		     const char **vals, size_t nkeys, struct where w,
		     const char **end, char *err, size_t err_len)
{
	struct apb_json_iter it;
	const char *key, *val;
	char ws[WHERE_MAX];

	for (size_t k = 0; k < nkeys; k++)
		vals[k] = NULL;
	apb_json_iter(&it, obj);
	while (apb_json_next(&it, &key, &val)) {
		for (size_t k = 0; k < nkeys; k++) {
			/* The first byte tells most keys apart: a model's
			 * 8 keys against its 8 members is the open's inner
			 * loop. */
			if ((key[1] != keys[k][0] && key[1] != '\\') ||
			    !apb_json_string_is(key, keys[k]))
				continue;
			if (vals[k])
				return apb_errf(err, err_len,
						"%s: key '%s' appears twice",
						where_str(w, ws), keys[k]);
			vals[k] = val;
		}
	}
	if (end)
		*end = it.p + 1;
	return 0;
}

/* Shortest %g spelling that reads back as d, for messages. */
static const char *fmt_double(double d, char *buf, size_t len)
{
	snprintf(buf, len, "%.15g", d);
	if (strtod(buf, NULL) != d)
		snprintf(buf, len, "%.17g", d);
	return buf;
}

/* Member v named key is there and a number or a string, as want says. */
static int json_want(const char *v, const char *key, enum apb_json_type want,
		     struct where w, char *err, size_t err_len)
{
	char ws[WHERE_MAX];

	if (!v)
		return apb_errf(err, err_len, "%s: '%s' is missing",
				where_str(w, ws), key);
	if (apb_json_type(v) != want)
		return apb_errf(err, err_len, "%s: '%s' is not a %s",
				where_str(w, ws), key,
				want == APB_JSON_NUMBER ? "number" : "string");
	return 0;
}

/* An exact non-negative integer (see the header comment for the rule). */
static int json_u64(const char *v, const char *key, struct where w,
		    uint64_t *out, char *err, size_t err_len)
{
	char ws[WHERE_MAX], num[40];
	double d;
	int rc = json_want(v, key, APB_JSON_NUMBER, w, err, err_len);

	if (rc)
		return rc;
	d = apb_json_number(v);
	if (d < 0)
		return apb_errf(err, err_len, "%s: '%s' %s is negative",
				where_str(w, ws), key,
				fmt_double(d, num, sizeof num));
	if (d > APB_JSON_EXACT_INT_MAX)
		return apb_errf(err, err_len,
				"%s: '%s' %s is not an exact integer (above 2^53-1)",
				where_str(w, ws), key,
				fmt_double(d, num, sizeof num));
	if (d != floor(d))
		return apb_errf(err, err_len,
				"%s: '%s' %s is not an exact integer",
				where_str(w, ws), key,
				fmt_double(d, num, sizeof num));
	*out = (uint64_t)d;
	return 0;
}

/* String member v named key, decoded into *out (apb_json_raw_len(v) + 1
 * bytes; when *out is NULL, a heap copy the caller frees) and *len. */
static int json_str(const char *v, const char *key, struct where w,
		    char **out, size_t *len, char *err, size_t err_len)
{
	int rc = json_want(v, key, APB_JSON_STRING, w, err, err_len);

	if (rc)
		return rc;
	if (!*out) {
		*out = malloc(apb_json_raw_len(v) + 1);
		if (!*out)
			return apb_fail(-ENOMEM, err, err_len, "out of memory");
	}
	*len = apb_json_string(v, *out);
	return 0;
}

/* Why apb_json_check() stopped, at byte pos. */
static int json_error(const char *text, size_t len, enum apb_json_error e,
		      size_t pos, char *err, size_t err_len)
{
	char q[APB_QUOTE_MAX];

	if (e == APB_JSON_ESCAPED_NUL || e == APB_JSON_RAW_NUL)
		return apb_errf(err, err_len,
				"manifest contains %s at byte %zu; NUL is not allowed in manifest strings",
				e == APB_JSON_RAW_NUL ? "a NUL byte"
						      : "an escaped NUL (\\u0000)",
				pos);
	if (e == APB_JSON_DEPTH)
		return apb_errf(err, err_len,
				"manifest is not valid JSON: nested too deeply at byte %zu of the manifest (limit %d)",
				pos, APB_JSON_DEPTH_MAX);
	/* Cut short: the last byte is where it went wrong. */
	if (pos >= len && len > 0)
		pos = len - 1;
	return apb_errf(err, err_len,
			"manifest is not valid JSON: syntax error at byte %zu of the manifest (near '%s')",
			pos, apb_name_quote(text + pos, len - pos, q, 24));
}

static bool is_json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Check text (NUL terminated at len) as one JSON object and whitespace;
 * *root: its first byte. */
static int parse_json(const char *text, size_t len, const char **root,
		      char *err, size_t err_len)
{
	enum apb_json_error e;
	size_t end, start = 0, values;

	e = apb_json_check(text, len, &end, &values);
	if (e != APB_JSON_OK)
		return json_error(text, len, e, end, err, err_len);
	if (values > JSON_VALUES_MAX)
		return apb_errf(err, err_len,
				"manifest has more than %u JSON values (the limit)",
				JSON_VALUES_MAX);
	for (size_t i = end; i < len; i++)
		if (!is_json_space(text[i]))
			return apb_errf(err, err_len,
					"manifest has unexpected bytes after the JSON value at byte %zu",
					i);
	while (is_json_space(text[start]))
		start++;
	if (apb_json_type(text + start) != APB_JSON_OBJECT)
		return apb_errf(err, err_len,
				"manifest top level is not a JSON object");
	*root = text + start;
	return 0;
}

/* The version 2 "chunk_table" object: where the table is, how many
 * entries, and the XXH3 of its bytes. */
struct table_ref {
	uint64_t offset, count, xxh3;
};

/* "checksum" v of what w names: "xxh3-64:" and 16 lower-case hex digits,
 * into *xxh3. */
static int json_checksum(const char *v, struct where w, uint64_t *xxh3,
			 char *err, size_t err_len)
{
	char buf[64], *s = buf, ws[WHERE_MAX], q[APB_QUOTE_MAX];
	size_t len;
	int rc;

	if (v && apb_json_type(v) == APB_JSON_STRING &&
	    apb_json_raw_len(v) >= sizeof buf)
		s = NULL; /* a long one, only for the message */
	rc = json_str(v, "checksum", w, &s, &len, err, err_len);
	if (rc)
		return rc;
	if (len != strlen(s) || apb_checksum_parse(s, xxh3) != 0)
		rc = apb_errf(err, err_len,
			      "%s: checksum '%s' is not \"xxh3-64:\" followed by 16 lower-case hex digits",
			      where_str(w, ws), apb_name_quote(s, len, q, 64));
	if (s != buf)
		free(s);
	return rc;
}

static int v2_chunk_table(const char *obj, struct table_ref *t, char *err,
			  size_t err_len)
{
	static const char *const keys[] = {"offset", "count", "checksum"};
	const char *v[3];
	int rc;

	if (!obj)
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is missing");
	if (apb_json_type(obj) != APB_JSON_OBJECT)
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is not a JSON object");
	rc = pick_keys(obj, keys, v, 3, TABLE, NULL, err, err_len);
	if (!rc)
		rc = json_u64(v[0], "offset", TABLE, &t->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[1], "count", TABLE, &t->count, err, err_len);
	if (!rc)
		rc = json_checksum(v[2], TABLE, &t->xxh3, err, err_len);
	return rc;
}

/* model_count, models and (version 2) chunk_table; returns the array and
 * its checked length. */
static int top_level(const char *root, unsigned version, const char **models,
		     size_t *count, struct table_ref *table, char *err,
		     size_t err_len)
{
	static const char *const keys[] = {"model_count", "models",
					   "chunk_table"};
	const struct where top = {NULL, TOP_LEVEL};
	const char *v[3];
	uint64_t n;
	size_t len;
	int rc;

	rc = pick_keys(root, keys, v, version == 2 ? 3 : 2, top, NULL, err,
		       err_len);
	if (rc)
		return rc;
	rc = json_u64(v[0], "model_count", top, &n, err, err_len);
	if (rc)
		return rc;
	if (n > APB_MODELS_MAX)
		return apb_errf(err, err_len,
				"manifest: 'model_count' %llu exceeds the limit of %u",
				(unsigned long long)n, APB_MODELS_MAX);
	if (!v[1])
		return apb_errf(err, err_len, "manifest: 'models' is missing");
	if (apb_json_type(v[1]) != APB_JSON_ARRAY)
		return apb_errf(err, err_len,
				"manifest: 'models' is not an array");
	len = apb_json_count(v[1]);
	if (len != n)
		return apb_errf(err, err_len,
				"manifest: 'model_count' is %llu but 'models' has %zu entries",
				(unsigned long long)n, len);
	if (version == 2) {
		rc = v2_chunk_table(v[2], table, err, err_len);
		if (rc)
			return rc;
	}
	*models = v[1];
	*count = (size_t)n;
	return 0;
}

/* A version 2 model's "compression", "chunk_size", "stored_size" and
 * "first_chunk" (v[0 .. 4)). */
static int v2_model_fields(const char *const *v, struct where w,
			   struct apb_model *m, char *err, size_t err_len)
{
	char ws[WHERE_MAX], q[APB_QUOTE_MAX], *s = NULL;
	size_t len;
	int rc;

	if (v[0] && apb_json_type(v[0]) == APB_JSON_STRING &&
	    apb_json_string_is(v[0], "none")) {
		m->compression = APB_COMPRESSION_NONE;
	} else if (v[0] && apb_json_type(v[0]) == APB_JSON_STRING &&
		   apb_json_string_is(v[0], "zstd")) {
		m->compression = APB_COMPRESSION_ZSTD;
	} else {
		rc = json_str(v[0], "compression", w, &s, &len, err, err_len);
		if (rc)
			return rc;
		rc = apb_errf(err, err_len,
			      "%s: unknown compression '%s' (this apbundlefs reads none and zstd)",
			      where_str(w, ws), apb_name_quote(s, len, q, 64));
		free(s);
		return rc;
	}
	rc = json_u64(v[1], "chunk_size", w, &m->chunk_size, err, err_len);
	if (!rc)
		rc = json_u64(v[2], "stored_size", w, &m->stored_size, err,
			      err_len);
	if (!rc)
		rc = json_u64(v[3], "first_chunk", w, &m->first_chunk, err,
			      err_len);
	if (rc)
		return rc;
	if (m->chunk_size < APB_CHUNK_SIZE_MIN ||
	    m->chunk_size > APB_CHUNK_SIZE_MAX)
		return apb_errf(err, err_len,
				"%s: chunk_size %llu is outside %u .. %u",
				where_str(w, ws),
				(unsigned long long)m->chunk_size,
				APB_CHUNK_SIZE_MIN, APB_CHUNK_SIZE_MAX);
	if (m->chunk_size % APB_ALIGN)
		return apb_errf(err, err_len,
				"%s: chunk_size %llu is not a multiple of %u",
				where_str(w, ws),
				(unsigned long long)m->chunk_size, APB_ALIGN);
	m->chunk_count = m->size / m->chunk_size +
			 (m->size % m->chunk_size != 0);
	if (m->size == 0 && m->stored_size != 0)
		return apb_errf(err, err_len,
				"%s: size is 0 but stored_size is %llu (an empty model stores nothing)",
				where_str(w, ws),
				(unsigned long long)m->stored_size);
	return 0;
}

/* One entry of "models", which ends at *end; its name is decoded at *pool,
 * which then moves past it. */
static int parse_model(const char *obj, size_t i, unsigned version,
		       struct apb_model *m, char **pool, const char **end,
		       char *err, size_t err_len)
{
	static const char *const keys[] = {"name", "offset", "size",
					   "checksum", "compression",
					   "chunk_size", "stored_size",
					   "first_chunk"};
	struct where w = {NULL, i};
	const char *v[8];
	char ws[WHERE_MAX];
	size_t len;
	int rc;

	if (apb_json_type(obj) != APB_JSON_OBJECT)
		return apb_errf(err, err_len, "%s is not a JSON object",
				where_str(w, ws));
	rc = pick_keys(obj, keys, v, version == 2 ? 8 : 4, w, end, err,
		       err_len);
	if (!rc)
		rc = json_str(v[0], "name", w, pool, &len, err, err_len);
	if (!rc)
		rc = apb_name_check(*pool, len, err, err_len);
	if (rc)
		return rc;
	m->name = w.name = *pool;
	*pool += len + 1;
	rc = json_u64(v[1], "offset", w, &m->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[2], "size", w, &m->size, err, err_len);
	if (!rc)
		rc = json_checksum(v[3], w, &m->xxh3, err, err_len);
	if (rc)
		return rc;
	m->stored_size = m->size;
	m->has_checksum = true;
	/* Version 2 places chunks, not models: a zstd model may start
	 * anywhere, and raw chunks carry the alignment rule. */
	if (version == 2)
		return v2_model_fields(v + 4, w, m, err, err_len);
	if (m->offset % APB_ALIGN)
		return apb_errf(err, err_len,
				"%s: offset %llu is not a multiple of %u",
				where_str(w, ws), (unsigned long long)m->offset,
				APB_ALIGN);
	return 0;
}

/* Names are decoded into a pool as large as the manifest (no name decodes
 * longer than it is spelled), then copied into one of their size. */
static int json_models(const char *root, size_t text_len, unsigned version,
		       struct apb_manifest *m, struct table_ref *table,
		       char *err, size_t err_len)
{
	struct apb_json_iter it;
	const char *arr = NULL, *key, *val, *end = NULL;
	char *pool, *at;
	size_t n = 0, i = 0;
	int rc;

	rc = top_level(root, version, &arr, &n, table, err, err_len);
	if (rc)
		return rc;
	m->models = calloc(n ? n : 1, sizeof *m->models);
	pool = at = malloc(text_len + 1);
	if (!m->models || !pool) {
		free(pool);
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for %zu models", n);
	}
	m->count = n;
	apb_json_iter(&it, arr);
	for (; rc == 0 && apb_json_next(&it, &key, &val); i++) {
		rc = parse_model(val, i, version, &m->models[i], &at, &end,
				 err, err_len);
		if (rc == 0)
			apb_json_resume(&it, end);
	}
	if (rc == 0) {
		m->names = malloc(at > pool ? (size_t)(at - pool) : 1);
		if (!m->names)
			rc = apb_fail(-ENOMEM, err, err_len,
				      "out of memory for model names");
	}
	if (rc == 0) {
		memcpy(m->names, pool, (size_t)(at - pool));
		for (i = 0; i < n; i++)
			m->models[i].name = m->names +
					    (m->models[i].name - pool);
	}
	free(pool);
	return rc;
}

/* Versions 1 and 2: u32 manifest length, JSON manifest; version 2 then
 * reads its chunk table. */
static int parse_json_layout(const struct apb_source *src, unsigned version,
			     struct apb_manifest *m, char *err, size_t err_len)
{
	uint64_t len = apb_le32(src->head + APB_MAGIC_LEN + 4);
	struct table_ref table = {0};
	uint8_t *text = NULL;
	const char *root = NULL;
	int rc;

	rc = apb_manifest_read(src, APB_V1_HEADER_LEN, len, &text, err,
			       err_len);
	if (rc)
		goto out;
	m->data_start = APB_V1_HEADER_LEN + len;
	rc = parse_json((const char *)text, (size_t)len, &root, err, err_len);
	if (rc)
		goto out;
	rc = json_models(root, (size_t)len, version, m, &table, err, err_len);
	if (rc == 0 && version == 2)
		rc = apb_v2_table_read(src, table.offset, table.count,
				       table.xxh3, m, err, err_len);
out:
	free(text);
	if (rc)
		apb_manifest_free(m);
	return rc;
}

/* ---- checks shared by every layout ------------------------------------ */

static int cmp_by_name(const void *a, const void *b)
{
	return strcmp(((const struct apb_model *)a)->name,
		      ((const struct apb_model *)b)->name);
}

/* Offset order, ties by name so the reported pair is deterministic. */
static int cmp_by_offset(const void *a, const void *b)
{
	const struct apb_model *x = *(const struct apb_model *const *)a;
	const struct apb_model *y = *(const struct apb_model *const *)b;

	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int check_extent(const struct apb_model *m, uint64_t data_start,
			uint64_t file_size, char *err, size_t err_len)
{
	char q[APB_QUOTE_MAX];

	if (m->offset < data_start)
		return apb_errf(err, err_len,
				"model '%s': offset %llu is inside the header and manifest (which end at %llu)",
				apb_mq(m, q), (unsigned long long)m->offset,
				(unsigned long long)data_start);
	if (m->stored_size > UINT64_MAX - m->offset)
		return apb_errf(err, err_len,
				"model '%s': offset %llu + size %llu overflows",
				apb_mq(m, q), (unsigned long long)m->offset,
				(unsigned long long)m->stored_size);
	if (m->offset + m->stored_size > file_size)
		return apb_errf(err, err_len,
				"model '%s': offset %llu + size %llu runs past end of file (%llu bytes)",
				apb_mq(m, q), (unsigned long long)m->offset,
				(unsigned long long)m->stored_size,
				(unsigned long long)file_size);
	return 0;
}

/* qsort() unless already in order: writers usually list models in name
 * and offset order, and checking is O(n) where sorting is O(n log n). */
static void sort_if_needed(void *base, size_t n, size_t size,
			   int (*cmp)(const void *, const void *))
{
	const char *p = base;

	for (size_t i = 1; i < n; i++)
		if (cmp(p + (i - 1) * size, p + i * size) > 0) {
			qsort(base, n, size, cmp);
			return;
		}
}

/* Walk the non-empty models in offset order, remembering the one that
 * reaches furthest: whoever starts before that end overlaps it. */
static int check_overlap(const struct apb_manifest *m, char *err,
			 size_t err_len)
{
	const struct apb_model **by_off;
	const struct apb_model *far = NULL;
	int rc = 0;

	by_off = malloc((m->count ? m->count : 1) * sizeof *by_off);
	if (!by_off)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	for (size_t i = 0; i < m->count; i++)
		by_off[i] = &m->models[i];
	sort_if_needed(by_off, m->count, sizeof *by_off, cmp_by_offset);
	for (size_t i = 0; i < m->count; i++) {
		const struct apb_model *cur = by_off[i];
		char qa[APB_QUOTE_MAX], qb[APB_QUOTE_MAX];

		if (cur->stored_size == 0)
			continue;
		if (far && cur->offset < far->offset + far->stored_size) {
			rc = apb_errf(err, err_len,
				      "models '%s' and '%s' overlap: '%s' covers bytes %llu to %llu, '%s' starts at %llu",
				      apb_mq(far, qa), apb_mq(cur, qb), qa,
				      (unsigned long long)far->offset,
				      (unsigned long long)(far->offset + far->stored_size),
				      qb, (unsigned long long)cur->offset);
			break;
		}
		if (!far || cur->offset + cur->stored_size >
				    far->offset + far->stored_size)
			far = cur;
	}
	free(by_off);
	return rc;
}

static int check_name_set(const struct apb_manifest *m, char *err,
			  size_t err_len)
{
	const char **names = malloc((m->count ? m->count : 1) * sizeof *names);
	int rc;

	if (!names)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	for (size_t i = 0; i < m->count; i++)
		names[i] = m->models[i].name;
	rc = apb_names_check_set(names, m->count, err, err_len);
	free(names);
	return rc;
}

/* Shared checks, then the final name order. Models arrive in manifest
 * order, so per-model errors name the first bad entry of the file. */
static int finish_models(struct apb_manifest *m, uint64_t file_size,
			 char *err, size_t err_len)
{
	int rc;

	for (size_t i = 0; i < m->count; i++) {
		rc = check_extent(&m->models[i], m->data_start, file_size, err,
				  err_len);
		if (rc)
			return rc;
	}
	sort_if_needed(m->models, m->count, sizeof *m->models, cmp_by_name);
	rc = check_name_set(m, err, err_len);
	if (rc)
		return rc;
	return check_overlap(m, err, err_len);
}

/* ---- open / close ----------------------------------------------------- */

/* Magic and version; picks the layout parser. */
static int parse_any(const struct apb_source *src, enum apb_layout *layout,
		     struct apb_manifest *m, char *err, size_t err_len)
{
	uint32_t version;

	if (src->head_len < APB_V1_HEADER_LEN)
		return apb_errf(err, err_len,
				"file is %llu bytes, shorter than the %u-byte header",
				(unsigned long long)src->file_size,
				APB_V1_HEADER_LEN);
	if (memcmp(src->head, APB_MAGIC, APB_MAGIC_LEN) != 0)
		return apb_errf(err, err_len,
				"not an apbundle file (bad magic)");
	version = apb_le32(src->head + APB_MAGIC_LEN);
	if (version != 1 && version != 2)
		return apb_errf(err, err_len,
				"unsupported format version %u (this apbundlefs reads 1 and 2)",
				version);
	if (version == 2) {
		/* Version 2 has one layout: the JSON manifest, u32 length. */
		if (src->head_len > APB_V1_HEADER_LEN &&
		    src->head[APB_V1_HEADER_LEN] != '{')
			return apb_errf(err, err_len,
					"manifest must begin with '{' (found byte 0x%02x at offset %u)",
					src->head[APB_V1_HEADER_LEN],
					APB_V1_HEADER_LEN);
		*layout = APB_LAYOUT_V2;
		return parse_json_layout(src, 2, m, err, err_len);
	}
	if (src->head_len > APB_V1_HEADER_LEN &&
	    src->head[APB_V1_HEADER_LEN] != '{') {
		/* Bytes 16..19 are the high half of aprender's u64 manifest
		 * length: non-zero would mean a manifest of 4 GiB or more, far
		 * past APB_MANIFEST_MAX, so the file is neither layout. Say so
		 * in terms of the JSON manifest, the documented format. */
		if (src->head_len >= APB_APRENDER_HEADER_LEN &&
		    apb_le32(src->head + APB_V1_HEADER_LEN) != 0)
			return apb_errf(err, err_len,
					"manifest must begin with '{' (found byte 0x%02x at offset %u)",
					src->head[APB_V1_HEADER_LEN],
					APB_V1_HEADER_LEN);
		*layout = APB_LAYOUT_APRENDER;
		return apb_aprender_parse(src, m, err, err_len);
	}
	*layout = APB_LAYOUT_V1;
	return parse_json_layout(src, 1, m, err, err_len);
}

static int open_file(const char *path, int *fd, struct stat *st, char *err,
		     size_t err_len)
{
	int rc;

	/* O_NONBLOCK: opening a FIFO must not wait for a writer; the type
	 * check below refuses it, and reads of a regular file ignore it. */
	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (*fd < 0) {
		rc = -errno;
		return apb_fail(rc, err, err_len, "cannot open: %s",
				strerror(-rc));
	}
	if (fstat(*fd, st) != 0) {
		rc = -errno;
		return apb_fail(rc, err, err_len, "cannot stat: %s",
				strerror(-rc));
	}
	if (!S_ISREG(st->st_mode))
		return apb_errf(err, err_len, "not a regular file");
	return 0;
}

int apb_bundle_open(const char *path, struct apb_bundle **out, char *err,
		    size_t err_len)
{
	struct apb_manifest m = {0};
	struct apb_v2_reader *reader = NULL;
	struct apb_bundle *b = NULL;
	uint8_t head[APB_HEAD_LEN];
	struct apb_source src = {.head = head};
	enum apb_layout layout = APB_LAYOUT_V1;
	struct stat st;
	int fd = -1, rc;

	*out = NULL;
	rc = open_file(path, &fd, &st, err, err_len);
	if (rc)
		goto out;
	src.fd = fd;
	src.file_size = (uint64_t)st.st_size;
	src.head_len = src.file_size < APB_HEAD_LEN ? (size_t)src.file_size
						    : APB_HEAD_LEN;
	rc = apb_pread_full(fd, head, src.head_len, 0);
	if (rc) {
		apb_fail(rc, err, err_len, "cannot read the header: %s",
			 strerror(-rc));
		goto out;
	}
	rc = parse_any(&src, &layout, &m, err, err_len);
	if (rc)
		goto out;
	rc = finish_models(&m, src.file_size, err, err_len);
	if (rc == 0 && layout == APB_LAYOUT_V2)
		rc = apb_v2_check_chunks(&m, err, err_len);
	if (rc)
		goto out;
	if (layout == APB_LAYOUT_V2 && apb_v2_reader_new(&reader) != 0) {
		rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
		goto out;
	}
	b = malloc(sizeof *b);
	if (!b) {
		rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
		goto out;
	}
	*b = (struct apb_bundle){.fd = fd, .dfd = -1, .layout = layout, .st = st,
				 .models = m.models, .count = m.count,
				 .names = m.names, .chunks = m.chunks,
				 .chunk_count = m.chunk_count,
				 .reader = reader};
	*out = b;
	return 0;
out:
	apb_v2_reader_free(reader);
	apb_manifest_free(&m);
	if (fd >= 0)
		close(fd);
	return rc;
}

void apb_bundle_close(struct apb_bundle *b)
{
	if (!b)
		return;
	close(b->fd);
	if (b->dfd >= 0)
		close(b->dfd);
	apb_v2_reader_free(b->reader);
	free(b->models);
	free(b->names);
	free(b->chunks);
	free(b);
}

/* ---- queries and reads ------------------------------------------------ */

enum apb_layout apb_bundle_layout(const struct apb_bundle *b)
{
	return b->layout;
}

size_t apb_bundle_count(const struct apb_bundle *b)
{
	return b->count;
}

const struct apb_model *apb_bundle_model(const struct apb_bundle *b,
					 size_t index)
{
	return index < b->count ? &b->models[index] : NULL;
}

int apb_bundle_find(const struct apb_bundle *b, const char *name,
		    size_t *index)
{
	size_t lo = 0, hi = b->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = strcmp(b->models[mid].name, name);

		if (r == 0) {
			*index = mid;
			return 0;
		}
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

/*
 * Every read of stored bytes: the leading iovecs that O_DIRECT can take
 * (file position, buffer and length multiples of APB_ALIGN, as the cache's
 * chunks are) go through dfd, the rest (a model's unaligned tail, or all of
 * it without dfd) through the page cache. Reads exactly want bytes into
 * iov from byte skip of iov[0] on.
 */
long apb_bundle_pread_stored(const struct apb_bundle *b, uint64_t pos,
			     const struct iovec *iov, int iovcnt, size_t skip,
			     size_t want)
{
	size_t direct = 0;
	long r;
	int n = 0;

	while (iovcnt > 0 && skip > 0 && skip >= iov[0].iov_len) {
		skip -= iov[0].iov_len;
		iov++;
		iovcnt--;
	}
	if (b->dfd >= 0 && pos % APB_ALIGN == 0) {
		for (; n < iovcnt && direct < want; n++) {
			size_t s = n == 0 ? skip : 0;
			size_t len = iov[n].iov_len - s;

			if (((uintptr_t)iov[n].iov_base + s) % APB_ALIGN ||
			    len % APB_ALIGN || len > want - direct)
				break;
			direct += len;
		}
	}
	if (direct > 0) {
		r = preadv_full(b->dfd, pos, iov, n, skip, direct);
		if (r == -EINVAL) /* stricter alignment than we know of */
			direct = 0, n = 0;
		else if (r < 0)
			return r;
	}
	if (direct == want)
		return (long)want;
	r = preadv_full(b->fd, pos + direct, iov + n, iovcnt - n, n ? 0 : skip,
			want - direct);
	return r < 0 ? r : (long)want;
}

long apb_bundle_read(const struct apb_bundle *b, size_t index, uint64_t off,
		     void *buf, size_t len)
{
	struct iovec v = {.iov_base = buf, .iov_len = len};

	return apb_bundle_preadv(b, index, off, &v, 1, NULL);
}

long apb_bundle_preadv(const struct apb_bundle *b, size_t index, uint64_t off,
		       const struct iovec *iov, int iovcnt,
		       uint64_t *bad_chunk)
{
	const struct apb_model *m;
	uint64_t want = 0;

	if (index >= b->count || iovcnt < 0)
		return -EINVAL;
	m = &b->models[index];
	if (off >= m->size)
		return 0;
	for (int i = 0; i < iovcnt && want < m->size - off; i++) {
		if (iov[i].iov_len >= m->size - off - want)
			want = m->size - off; /* clipped; no overflow */
		else
			want += iov[i].iov_len;
	}
	if (want > LONG_MAX)
		want = LONG_MAX;
	switch (b->layout) {
	case APB_LAYOUT_V1:
	case APB_LAYOUT_APRENDER:
		return apb_bundle_pread_stored(b, m->offset + off, iov, iovcnt,
					       0, (size_t)want);
	case APB_LAYOUT_V2:
		return apb_v2_preadv(b, b->reader, m, b->chunks, off, iov,
				     iovcnt, (size_t)want, bad_chunk);
	}
	return -EINVAL;
}

int apb_bundle_direct_io(struct apb_bundle *b)
{
	char path[64];
	struct stat st;
	int fd;

	if (b->dfd >= 0)
		return 0;
	/* Reopen the open file, not its path, which may name another by now. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", b->fd);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0 || st.st_dev != b->st.st_dev ||
	    st.st_ino != b->st.st_ino) {
		close(fd);
		return -ESTALE;
	}
	b->dfd = fd;
	return 0;
}

const struct stat *apb_bundle_stat(const struct apb_bundle *b)
{
	return &b->st;
}
