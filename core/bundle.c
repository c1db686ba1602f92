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
 *   - "model_count" and every "offset"/"size" must be exact non-negative
 *     integers. cJSON keeps numbers as doubles, so a value is accepted only
 *     if it is integral and at most 2^53 - 1: above that a double no longer
 *     tells neighbouring integers apart, and such values are rejected as
 *     "not an exact integer";
 *   - "checksum" is required and must be "xxh3-64:" + 16 lower-case hex;
 *   - every offset, of empty models too, is a multiple of 4096 and not
 *     inside the header or manifest;
 *   - a known key that appears twice in one object is an error (JSON tools
 *     disagree on which copy wins); unknown keys are ignored;
 *   - no string may contain an escaped NUL ("\u0000"): cJSON's C strings
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
 * APB_MANIFEST_MAX, APB_MODELS_MAX and JSON_VALUES_MAX (the size of the
 * cJSON tree) before they are made.
 *
 * Thread safety: a bundle never changes after open (apb_bundle_direct_io()
 * included, which is called before sharing); reads use pread() on its
 * descriptors, so any number of threads may share it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"
#include "format.h"

#define EXACT_INT_MAX 9007199254740991.0 /* 2^53 - 1 */
#define READV_BATCH 64 /* iovecs per preadv(), on the stack */
/* Cap on the values of a JSON manifest: 16 per model at APB_MODELS_MAX.
 * cJSON spends about 80 bytes of heap per value, so without it the 2-byte
 * "0," would turn a 256 MiB manifest into some 10 GiB of tree. */
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
 * Find the keys[] members of object obj, vals[k] = NULL if absent. A key
 * seen twice is an error: cJSON would silently take the first copy while
 * other JSON tools take the last.
 */
static int pick_keys(const cJSON *obj, const char *const *keys,
		     const cJSON **vals, size_t nkeys, struct where w,
		     char *err, size_t err_len)
{
	char ws[WHERE_MAX];
	const cJSON *it;

	for (size_t k = 0; k < nkeys; k++)
		vals[k] = NULL;
	cJSON_ArrayForEach(it, obj) {
		for (size_t k = 0; k < nkeys; k++) {
			/* The first byte tells most keys apart: a model's
			 * 8 keys against its 8 members is the open's inner
			 * loop. */
			if (it->string[0] != keys[k][0] ||
			    strcmp(it->string, keys[k]) != 0)
				continue;
			if (vals[k])
				return apb_errf(err, err_len,
						"%s: key '%s' appears twice",
						where_str(w, ws), keys[k]);
			vals[k] = it;
		}
	}
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

/* An exact non-negative integer (see the header comment for the rule). */
static int json_u64(const cJSON *v, const char *key, struct where w,
		    uint64_t *out, char *err, size_t err_len)
{
	char ws[WHERE_MAX], num[40];
	double d;

	if (!v)
		return apb_errf(err, err_len, "%s: '%s' is missing",
				where_str(w, ws), key);
	if (!cJSON_IsNumber(v))
		return apb_errf(err, err_len, "%s: '%s' is not a number",
				where_str(w, ws), key);
	d = v->valuedouble;
	if (d < 0)
		return apb_errf(err, err_len, "%s: '%s' %s is negative",
				where_str(w, ws), key,
				fmt_double(d, num, sizeof num));
	if (d > EXACT_INT_MAX)
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

/* Where cJSON stopped, with a few bytes of context. */
static int json_syntax_error(const char *text, size_t len, const char *at,
			     char *err, size_t err_len)
{
	size_t pos = at && at >= text && at <= text + len ? (size_t)(at - text)
							   : len;
	char q[APB_QUOTE_MAX];

	if (pos >= len)
		return apb_errf(err, err_len,
				"manifest is not valid JSON: unexpected end at byte %zu of the manifest",
				pos);
	return apb_errf(err, err_len,
			"manifest is not valid JSON: syntax error at byte %zu of the manifest (near '%s')",
			pos, apb_name_quote(text + pos, len - pos, q, 24));
}

static bool is_json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Offset of the first escaped NUL ("\u0000") in text, or len. cJSON
 * decodes it into a C string that then silently ends early, so a name
 * "a\u0000b" would turn into "a"; such manifests are refused instead.
 */
static size_t find_escaped_nul(const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (text[i] != '\\')
			continue;
		if (i + 6 <= len && memcmp(text + i + 1, "u0000", 5) == 0)
			return i;
		i++; /* skip the escaped character, e.g. the second of "\\" */
	}
	return len;
}

/*
 * At least as many as the values cJSON would build from text: one per ','
 * and per '[' or '{' outside strings, plus the top-level value. Counted
 * before parsing, as the parse itself is the allocation to bound.
 */
static size_t json_values_bound(const char *text, size_t len)
{
	size_t n = 1;
	bool in_string = false;

	for (size_t i = 0; i < len; i++) {
		char c = text[i];

		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == ',' || c == '[' || c == '{') {
			n++;
		}
	}
	return n;
}

static int parse_json(const char *text, size_t len, cJSON **out, char *err,
		      size_t err_len)
{
	const char *end = NULL;
	cJSON *root;
	size_t nul;

	if (json_values_bound(text, len) > JSON_VALUES_MAX)
		return apb_errf(err, err_len,
				"manifest has more than %u JSON values (the limit)",
				JSON_VALUES_MAX);
	root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!root)
		return json_syntax_error(text, len, end, err, err_len);
	nul = find_escaped_nul(text, len);
	if (nul < len) {
		cJSON_Delete(root);
		return apb_errf(err, err_len,
				"manifest contains an escaped NUL (\\u0000) at byte %zu; NUL is not allowed in manifest strings",
				nul);
	}
	for (size_t i = (size_t)(end - text); i < len; i++) {
		if (is_json_space(text[i]))
			continue;
		cJSON_Delete(root);
		return apb_errf(err, err_len,
				"manifest has unexpected bytes after the JSON value at byte %zu",
				i);
	}
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return apb_errf(err, err_len,
				"manifest top level is not a JSON object");
	}
	*out = root;
	return 0;
}

/* The version 2 "chunk_table" object: where the table is, how many
 * entries, and the XXH3 of its bytes. */
struct table_ref {
	uint64_t offset, count, xxh3;
};

static int v2_chunk_table(const cJSON *obj, struct table_ref *t, char *err,
			  size_t err_len)
{
	static const char *const keys[] = {"offset", "count", "checksum"};
	const cJSON *v[3];
	char q[APB_QUOTE_MAX];
	int rc;

	if (!obj)
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is missing");
	if (!cJSON_IsObject(obj))
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is not a JSON object");
	rc = pick_keys(obj, keys, v, 3, TABLE, err, err_len);
	if (!rc)
		rc = json_u64(v[0], "offset", TABLE, &t->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[1], "count", TABLE, &t->count, err, err_len);
	if (rc)
		return rc;
	if (!v[2])
		return apb_errf(err, err_len, "chunk_table: 'checksum' is missing");
	if (!cJSON_IsString(v[2]))
		return apb_errf(err, err_len,
				"chunk_table: 'checksum' is not a string");
	if (apb_checksum_parse(v[2]->valuestring, &t->xxh3) != 0)
		return apb_errf(err, err_len,
				"chunk_table: checksum '%s' is not \"xxh3-64:\" followed by 16 lower-case hex digits",
				apb_name_quote(v[2]->valuestring,
					       strlen(v[2]->valuestring), q, 64));
	return 0;
}

/* model_count, models and (version 2) chunk_table; returns the array and
 * its checked length. */
static int top_level(const cJSON *root, unsigned version, const cJSON **models,
		     size_t *count, struct table_ref *table, char *err,
		     size_t err_len)
{
	static const char *const keys[] = {"model_count", "models",
					   "chunk_table"};
	const struct where top = {NULL, TOP_LEVEL};
	const cJSON *v[3];
	uint64_t n;
	int rc, len;

	rc = pick_keys(root, keys, v, version == 2 ? 3 : 2, top, err, err_len);
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
	if (!cJSON_IsArray(v[1]))
		return apb_errf(err, err_len,
				"manifest: 'models' is not an array");
	len = cJSON_GetArraySize(v[1]);
	if ((uint64_t)len != n)
		return apb_errf(err, err_len,
				"manifest: 'model_count' is %llu but 'models' has %d entries",
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
static int v2_model_fields(const cJSON *const *v, struct where w,
			   struct apb_model *m, char *err, size_t err_len)
{
	char ws[WHERE_MAX], q[APB_QUOTE_MAX];
	int rc;

	if (!v[0])
		return apb_errf(err, err_len, "%s: 'compression' is missing",
				where_str(w, ws));
	if (!cJSON_IsString(v[0]))
		return apb_errf(err, err_len,
				"%s: 'compression' is not a string",
				where_str(w, ws));
	if (strcmp(v[0]->valuestring, "none") == 0)
		m->compression = APB_COMPRESSION_NONE;
	else if (strcmp(v[0]->valuestring, "zstd") == 0)
		m->compression = APB_COMPRESSION_ZSTD;
	else
		return apb_errf(err, err_len,
				"%s: unknown compression '%s' (this apbundlefs reads none and zstd)",
				where_str(w, ws),
				apb_name_quote(v[0]->valuestring,
					       strlen(v[0]->valuestring), q, 64));
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

/* One entry of "models"; m->name points into the cJSON tree for now. */
static int parse_model(const cJSON *obj, size_t i, unsigned version,
		       struct apb_model *m, char *err, size_t err_len)
{
	static const char *const keys[] = {"name", "offset", "size",
					   "checksum", "compression",
					   "chunk_size", "stored_size",
					   "first_chunk"};
	struct where w = {NULL, i};
	const cJSON *v[8];
	char ws[WHERE_MAX], q[APB_QUOTE_MAX];
	int rc;

	if (!cJSON_IsObject(obj))
		return apb_errf(err, err_len, "%s is not a JSON object",
				where_str(w, ws));
	rc = pick_keys(obj, keys, v, version == 2 ? 8 : 4, w, err, err_len);
	if (rc)
		return rc;
	if (!v[0])
		return apb_errf(err, err_len, "%s: 'name' is missing",
				where_str(w, ws));
	if (!cJSON_IsString(v[0]))
		return apb_errf(err, err_len, "%s: 'name' is not a string",
				where_str(w, ws));
	rc = apb_name_check(v[0]->valuestring, strlen(v[0]->valuestring), err,
			    err_len);
	if (rc)
		return rc;
	m->name = w.name = v[0]->valuestring;
	rc = json_u64(v[1], "offset", w, &m->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[2], "size", w, &m->size, err, err_len);
	if (rc)
		return rc;
	m->stored_size = m->size;
	if (!v[3])
		return apb_errf(err, err_len, "%s: 'checksum' is missing",
				where_str(w, ws));
	if (!cJSON_IsString(v[3]))
		return apb_errf(err, err_len, "%s: 'checksum' is not a string",
				where_str(w, ws));
	if (apb_checksum_parse(v[3]->valuestring, &m->xxh3) != 0)
		return apb_errf(err, err_len,
				"%s: checksum '%s' is not \"xxh3-64:\" followed by 16 lower-case hex digits",
				where_str(w, ws),
				apb_name_quote(v[3]->valuestring,
					       strlen(v[3]->valuestring), q, 64));
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

/* Copy the names out of the cJSON tree into the manifest's own pool. */
static int intern_names(struct apb_manifest *m, char *err, size_t err_len)
{
	size_t total = 0, o = 0;

	for (size_t i = 0; i < m->count; i++)
		total += strlen(m->models[i].name) + 1;
	m->names = malloc(total ? total : 1);
	if (!m->names)
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for model names");
	for (size_t i = 0; i < m->count; i++) {
		size_t n = strlen(m->models[i].name) + 1;

		memcpy(m->names + o, m->models[i].name, n);
		m->models[i].name = m->names + o;
		o += n;
	}
	return 0;
}

static int json_models(const cJSON *root, unsigned version,
		       struct apb_manifest *m, struct table_ref *table,
		       char *err, size_t err_len)
{
	const cJSON *arr = NULL, *it;
	size_t n = 0, i = 0;
	int rc;

	rc = top_level(root, version, &arr, &n, table, err, err_len);
	if (rc)
		return rc;
	m->models = calloc(n ? n : 1, sizeof *m->models);
	if (!m->models)
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for %zu models", n);
	m->count = n;
	cJSON_ArrayForEach(it, arr) {
		rc = parse_model(it, i, version, &m->models[i], err, err_len);
		if (rc)
			return rc;
		i++;
	}
	return intern_names(m, err, err_len);
}

/*
 * Give the freed cJSON tree back to the system. The tree is millions of
 * small blocks (about 20 a model); once freed they sit in the heap below
 * blocks allocated after them, where glibc's automatic trimming (from the
 * top only) cannot reach: 116 MiB stayed resident after opening a bundle
 * of 100,000 version 2 models. malloc_trim() also returns whole free pages
 * in the middle of the heap.
 */
static void trim_heap(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

/* Versions 1 and 2: u32 manifest length, JSON manifest; version 2 then
 * reads its chunk table. */
static int parse_json_layout(const struct apb_source *src, unsigned version,
			     struct apb_manifest *m, char *err, size_t err_len)
{
	uint64_t len = apb_le32(src->head + APB_MAGIC_LEN + 4);
	struct table_ref table = {0};
	uint8_t *text = NULL;
	cJSON *root = NULL;
	int rc;

	rc = apb_manifest_read(src, APB_V1_HEADER_LEN, len, &text, err,
			       err_len);
	if (rc)
		goto out;
	m->data_start = APB_V1_HEADER_LEN + len;
	rc = parse_json((const char *)text, (size_t)len, &root, err, err_len);
	if (rc)
		goto out;
	rc = json_models(root, version, m, &table, err, err_len);
	if (rc == 0 && version == 2)
		rc = apb_v2_table_read(src, table.offset, table.count,
				       table.xxh3, m, err, err_len);
out:
	cJSON_Delete(root);
	free(text);
	trim_heap();
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
