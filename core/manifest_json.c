/*
 * manifest_json.c - the JSON manifests of versions 1 and 2 (docs/FORMAT.md),
 * read into the common model table (format.h) by json.c's scanner, with no
 * parse tree: one pass checks the syntax and counts values, then the models
 * are read straight out of the text.
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
 *   - every model also has a "compression" ("none" or "zstd"; anything
 *     else is refused by name), a "chunk_size" (a multiple of 4096 in
 *     4096 .. 16 MiB), a "stored_size" and a "first_chunk"; an empty model
 *     stores 0 bytes;
 *   - each of those four and "offset" may be left out and then takes its
 *     default: "compression" and "chunk_size" the top level's (themselves
 *     optional, "none" and 65536), "first_chunk" the table entry after the
 *     previous model's blocks; "offset" and "stored_size" are left to the
 *     block table (APB_V2_FROM_TABLE here, the extent of the model's
 *     blocks once v2.c has read it). The writer leaves every one of them
 *     out, so that a model is spelled with fewer keys than in version 1
 *     and the open's parse, most of its time, is shorter;
 *   - those keys keep the spelling of the format: "chunk_table" is the
 *     block table, "chunk_size" a model's block size, "first_chunk" its
 *     first entry in the block table (docs/FORMAT.md);
 *   - model offsets need not be aligned: raw blocks are (v2.c), frames of
 *     a "zstd" model may start anywhere;
 *   - keys of version 2 inside a version 1 manifest are unknown keys:
 *     ignored, as before.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"
#include "format.h"
#include "json.h"

/* Cap on the values of a JSON manifest: 16 per model at APB_MODELS_MAX.
 * It bounded the parse tree of the JSON library once used (the 2-byte "0,"
 * would have made 10 GiB of tree of a 256 MiB manifest); it stays a rule of
 * the format (docs/FORMAT.md). */
#define JSON_VALUES_MAX (16u << 20)

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

/* A key a reader looks for, with its length: keys are told apart by
 * length and bytes, the open's inner loop (a model's 8 keys against its
 * 8 members). */
struct key {
	const char *s;
	size_t len;
};

#define KEY(s) {s, sizeof s - 1}

/* Whether the key at p (its opening quote) is k spelled without escapes;
 * the bytes are compared up to the first that differs, at most k's and
 * the closing quote (the text is checked and NUL terminated). */
static bool key_is(const char *p, const struct key *k)
{
	for (size_t i = 0; i < k->len; i++) /* short: no call to memcmp() */
		if (p[1 + i] != k->s[i])
			return false;
	return p[1 + k->len] == '"';
}

/* keys[] index of the key at p, ending at key_end, or nkeys. The escaped
 * spelling of a key is legal and rare: only a key that matches none as
 * spelled is decoded. */
static size_t key_find(const char *p, const char *key_end,
		       const struct key *keys, size_t nkeys)
{
	size_t k;

	for (k = 0; k < nkeys; k++)
		if (key_is(p, &keys[k]))
			return k;
	if (!memchr(p + 1, '\\', (size_t)(key_end - p) - 2))
		return nkeys;
	for (k = 0; k < nkeys; k++)
		if (apb_json_string_is(p, keys[k].s))
			break;
	return k;
}

#define ORDER_MAX 8 /* members whose key order is remembered */

/*
 * Find the keys[] members of object obj, vals[k] = NULL if absent; *end
 * (when not NULL): where obj ends. A key seen twice is an error: JSON
 * tools disagree on which copy wins. hints: the check's, to skip the
 * members it measured without walking them again. order (ORDER_MAX
 * entries, or NULL): which key each of the first members was in the
 * previous object, tried first; the models of a manifest all spell their
 * keys in one order, so that is one comparison a member.
 */
static int pick_keys(const char *obj, const struct key *keys,
		     const char **vals, size_t nkeys, struct where w,
		     const struct apb_json_hints *hints,
		     unsigned char *order, const char **end, char *err,
		     size_t err_len)
{
	const char *p = apb_json_ws(obj + 1), *key_end;
	char ws[WHERE_MAX];

	for (size_t k = 0; k < nkeys; k++)
		vals[k] = NULL;
	/* The members by hand rather than with apb_json_next(): a key
	 * that is the one guessed is compared and passed in one go. */
	for (size_t j = 0; *p != '}'; j++) {
		const struct apb_json_hint *h;
		size_t k = order && j < ORDER_MAX ? order[j] : nkeys;

		if (k < nkeys && key_is(p, &keys[k])) {
			key_end = p + keys[k].len + 2;
		} else {
			key_end = apb_json_skip_string(p);
			k = key_find(p, key_end, keys, nkeys);
			if (order && j < ORDER_MAX)
				order[j] = (unsigned char)k;
		}
		p = apb_json_ws(apb_json_ws(key_end) + 1); /* past the ':' */
		if (k < nkeys) {
			if (vals[k])
				return apb_errf(err, err_len,
						"%s: key '%s' appears twice",
						where_str(w, ws), keys[k].s);
			vals[k] = p;
		}
		if (hints && (*p == '{' || *p == '[') &&
		    (h = apb_json_hint(hints, p)))
			p = h->end;
		else
			p = apb_json_skip(p);
		p = apb_json_ws(p);
		if (*p == ',')
			p = apb_json_ws(p + 1);
	}
	if (end)
		*end = p + 1;
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
	uint64_t n = 0;
	int rc, len = 0;

	/* Up to 15 plain digits: exact, and the common case. */
	if (v) {
		while (v[len] >= '0' && v[len] <= '9' && len < 16)
			n = n * 10 + (uint64_t)(v[len++] - '0');
		if (len > 0 && len <= 15 && v[len] != '.' && v[len] != 'e' &&
		    v[len] != 'E') {
			*out = n;
			return 0;
		}
	}
	rc = json_want(v, key, APB_JSON_NUMBER, w, err, err_len);
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
		      struct apb_json_hints *hints, char *err, size_t err_len)
{
	enum apb_json_error e;
	size_t end, start = 0, values;

	e = apb_json_check(text, len, &end, &values, hints);
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
/* String v is spelled "xxh3-64:" and 16 lower-case hex digits, no
 * escapes: its value into *xxh3, without decoding a copy. Anything else
 * (escaped spellings included) takes json_checksum()'s general path. */
static bool checksum_plain(const char *v, uint64_t *xxh3)
{
	static const char prefix[] = APB_CHECKSUM_PREFIX;
	/* Digit value + 1, 0 for any other byte: a table, as random hex
	 * digits would mispredict a branch on digit or letter. */
	static const unsigned char hex1[256] = {
		['0'] = 1,  ['1'] = 2,	['2'] = 3,  ['3'] = 4,	['4'] = 5,
		['5'] = 6,  ['6'] = 7,	['7'] = 8,  ['8'] = 9,	['9'] = 10,
		['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
		['f'] = 16};
	uint64_t x = 0;
	const char *p = v + 1;

	for (size_t i = 0; i < sizeof prefix - 1; i++)
		if (*p++ != prefix[i])
			return false;
	for (int i = 0; i < 16; i++) {
		unsigned d = hex1[(unsigned char)p[i]];

		if (!d) /* p[i] may be the string's end: stop there */
			return false;
		x = x << 4 | (d - 1);
	}
	p += 16;
	if (*p != '"')
		return false;
	*xxh3 = x;
	return true;
}

/* "checksum" v of what w names: "xxh3-64:" and 16 lower-case hex digits,
 * into *xxh3. */
static int json_checksum(const char *v, struct where w, uint64_t *xxh3,
			 char *err, size_t err_len)
{
	char buf[64], *s = buf, ws[WHERE_MAX], q[APB_QUOTE_MAX];
	size_t len;
	int rc;

	if (v && *v == '"' && checksum_plain(v, xxh3))
		return 0;
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

static int v2_block_table(const char *obj, struct apb_v2_table_ref *t, char *err,
			  size_t err_len)
{
	static const struct key keys[] = {KEY("offset"), KEY("count"),
					  KEY("checksum")};
	const char *v[3];
	int rc;

	if (!obj)
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is missing");
	if (apb_json_type(obj) != APB_JSON_OBJECT)
		return apb_errf(err, err_len,
				"manifest: 'chunk_table' is not a JSON object");
	rc = pick_keys(obj, keys, v, 3, TABLE, NULL, NULL, NULL, err,
		       err_len);
	if (!rc)
		rc = json_u64(v[0], "offset", TABLE, &t->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[1], "count", TABLE, &t->count, err, err_len);
	if (!rc)
		rc = json_checksum(v[2], TABLE, &t->xxh3, err, err_len);
	return rc;
}

/* What a version 2 model leaves out (docs/FORMAT.md): the top level's
 * "compression" and "chunk_size", and the table entry after the previous
 * model's blocks. */
struct v2_defaults {
	enum apb_compression compression;
	uint64_t block_size;
	uint64_t next_block;
};

/* A "compression" value v, present. */
static int json_compression(const char *v, struct where w,
			    enum apb_compression *out, char *err,
			    size_t err_len)
{
	char ws[WHERE_MAX], q[APB_QUOTE_MAX], *s = NULL;
	size_t len;
	int rc;

	/* The plain spellings first, straight from the text (strncmp()
	 * stops at the NUL after it). */
	if (strncmp(v, "\"none\"", 6) == 0) {
		*out = APB_COMPRESSION_NONE;
	} else if (strncmp(v, "\"zstd\"", 6) == 0) {
		*out = APB_COMPRESSION_ZSTD;
	} else if (apb_json_type(v) == APB_JSON_STRING &&
		   apb_json_string_is(v, "none")) {
		*out = APB_COMPRESSION_NONE;
	} else if (apb_json_type(v) == APB_JSON_STRING &&
		   apb_json_string_is(v, "zstd")) {
		*out = APB_COMPRESSION_ZSTD;
	} else {
		rc = json_str(v, "compression", w, &s, &len, err, err_len);
		if (rc)
			return rc;
		rc = apb_errf(err, err_len,
			      "%s: unknown compression '%s' (this apbundlefs reads none and zstd)",
			      where_str(w, ws), apb_name_quote(s, len, q, 64));
		free(s);
		return rc;
	}
	return 0;
}

/* A "chunk_size" value v, present. */
static int json_block_size(const char *v, struct where w, uint64_t *out,
			   char *err, size_t err_len)
{
	char ws[WHERE_MAX];
	int rc = json_u64(v, "chunk_size", w, out, err, err_len);

	if (rc)
		return rc;
	if (*out < APB_BLOCK_SIZE_MIN || *out > APB_BLOCK_SIZE_MAX)
		return apb_errf(err, err_len,
				"%s: chunk_size %llu is outside %u .. %u",
				where_str(w, ws), (unsigned long long)*out,
				APB_BLOCK_SIZE_MIN, APB_BLOCK_SIZE_MAX);
	if (*out % APB_ALIGN)
		return apb_errf(err, err_len,
				"%s: chunk_size %llu is not a multiple of %u",
				where_str(w, ws), (unsigned long long)*out,
				APB_ALIGN);
	return 0;
}

/* model_count, models and (version 2) chunk_table and the models'
 * defaults; returns the array and its checked length. */
static int top_level(const char *root, unsigned version,
		     const struct apb_json_hints *hints, const char **models,
		     size_t *count, struct apb_v2_table_ref *table,
		     struct v2_defaults *d, char *err, size_t err_len)
{
	static const struct key keys[] = {KEY("model_count"), KEY("models"),
					  KEY("chunk_table"), KEY("compression"),
					  KEY("chunk_size")};
	const struct apb_json_hint *h;
	const struct where top = {NULL, TOP_LEVEL};
	const char *v[5];
	uint64_t n;
	size_t len;
	int rc;

	rc = pick_keys(root, keys, v, version == 2 ? 5 : 2, top, hints, NULL,
		       NULL, err, err_len);
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
	h = apb_json_hint(hints, v[1]);
	len = h ? h->count : apb_json_count(v[1]);
	if (len != n)
		return apb_errf(err, err_len,
				"manifest: 'model_count' is %llu but 'models' has %zu entries",
				(unsigned long long)n, len);
	*d = (struct v2_defaults){APB_COMPRESSION_NONE, APB_V2_BLOCK_DEFAULT,
				  0};
	if (version == 2) {
		rc = v2_block_table(v[2], table, err, err_len);
		if (!rc && v[3])
			rc = json_compression(v[3], top, &d->compression, err,
					      err_len);
		if (!rc && v[4])
			rc = json_block_size(v[4], top, &d->block_size, err,
					     err_len);
		if (rc)
			return rc;
	}
	*models = v[1];
	*count = (size_t)n;
	return 0;
}

/* A version 2 model's "compression", "chunk_size", "stored_size" and
 * "first_chunk" (v[0 .. 4)), each absent one from d; d then points past
 * the model's blocks. */
static int v2_model_fields(const char *const *v, struct where w,
			   struct v2_defaults *d, struct apb_model *m,
			   char *err, size_t err_len)
{
	char ws[WHERE_MAX];
	int rc = 0;

	m->compression = d->compression;
	if (v[0])
		rc = json_compression(v[0], w, &m->compression, err, err_len);
	m->block_size = d->block_size;
	if (!rc && v[1])
		rc = json_block_size(v[1], w, &m->block_size, err, err_len);
	m->stored_size = APB_V2_FROM_TABLE;
	if (!rc && v[2])
		rc = json_u64(v[2], "stored_size", w, &m->stored_size, err,
			      err_len);
	m->first_block = d->next_block;
	if (!rc && v[3])
		rc = json_u64(v[3], "first_chunk", w, &m->first_block, err,
			      err_len);
	if (rc)
		return rc;
	m->block_count = m->size / m->block_size +
			 (m->size % m->block_size != 0);
	/* No overflow: first_block < 2^53 and block_count <= size / 4096. */
	d->next_block = m->first_block + m->block_count;
	if (m->size == 0 && m->stored_size != 0 &&
	    m->stored_size != APB_V2_FROM_TABLE)
		return apb_errf(err, err_len,
				"%s: size is 0 but stored_size is %llu (an empty model stores nothing)",
				where_str(w, ws),
				(unsigned long long)m->stored_size);
	return 0;
}

/* One entry of "models", which ends at *end; its name is decoded at *pool,
 * which then moves past it. */
static int parse_model(const char *obj, size_t i, unsigned version,
		       struct v2_defaults *d, unsigned char *order,
		       struct apb_model *m, char **pool,
		       const char **end, char *err, size_t err_len)
{
	static const struct key keys[] = {
		KEY("name"),	    KEY("offset"),     KEY("size"),
		KEY("checksum"),    KEY("compression"), KEY("chunk_size"),
		KEY("stored_size"), KEY("first_chunk")};
	struct where w = {NULL, i};
	const char *v[8];
	char ws[WHERE_MAX];
	size_t len;
	int rc;

	if (apb_json_type(obj) != APB_JSON_OBJECT)
		return apb_errf(err, err_len, "%s is not a JSON object",
				where_str(w, ws));
	rc = pick_keys(obj, keys, v, version == 2 ? 8 : 4, w, NULL, order,
		       end, err, err_len);
	if (!rc)
		rc = json_str(v[0], "name", w, pool, &len, err, err_len);
	if (!rc)
		rc = apb_name_check(*pool, len, err, err_len);
	if (rc)
		return rc;
	m->name = w.name = *pool;
	*pool += len + 1;
	m->offset = APB_V2_FROM_TABLE;
	if (v[1] || version == 1)
		rc = json_u64(v[1], "offset", w, &m->offset, err, err_len);
	if (!rc)
		rc = json_u64(v[2], "size", w, &m->size, err, err_len);
	if (!rc)
		rc = json_checksum(v[3], w, &m->xxh3, err, err_len);
	if (rc)
		return rc;
	m->stored_size = m->size;
	m->has_checksum = true;
	/* Version 2 places blocks, not models: a zstd model may start
	 * anywhere, and raw blocks carry the alignment rule. */
	if (version == 2)
		return v2_model_fields(v + 4, w, d, m, err, err_len);
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
		       const struct apb_json_hints *hints,
		       struct apb_manifest *m, struct apb_v2_table_ref *table,
		       char *err, size_t err_len)
{
	struct apb_json_iter it;
	struct v2_defaults d;
	const char *arr = NULL, *key, *val, *end = NULL;
	char *pool, *at;
	unsigned char order[ORDER_MAX];
	size_t n = 0, i = 0;
	int rc;

	rc = top_level(root, version, hints, &arr, &n, table, &d, err,
		       err_len);
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
	memset(order, 0xff, sizeof order); /* no guess yet */
	apb_json_iter(&it, arr);
	for (; rc == 0 && apb_json_next(&it, &key, &val); i++) {
		rc = parse_model(val, i, version, &d, order, &m->models[i], &at,
				 &end, err, err_len);
		if (rc == 0)
			apb_json_resume(&it, end);
	}
	if (rc == 0) {
		/* Shrunk in place (a large block is remapped), the names
		 * keep their pages: no copy, no first touch of new ones. A
		 * shrink that fails leaves the pool as it was. */
		uintptr_t was = (uintptr_t)pool;
		char *names = realloc(pool, at > pool ? (size_t)(at - pool) : 1);

		m->names = names ? names : pool;
		pool = NULL;
		if ((uintptr_t)m->names != was)
			for (i = 0; i < n; i++)
				m->models[i].name =
					m->names +
					((uintptr_t)m->models[i].name - was);
	}
	free(pool);
	return rc;
}

int apb_json_manifest_parse(const struct apb_source *src, unsigned version,
			    struct apb_manifest *m,
			    struct apb_v2_table_ref *table, char *err,
			    size_t err_len)
{
	size_t head_len;
	uint64_t len = apb_le32(apb_source_head(src, &head_len) +
				APB_MAGIC_LEN + 4);
	struct apb_v2_table_ref ref = {0};
	struct apb_json_hints hints;
	uint8_t *text = NULL;
	const char *root = NULL;
	int rc;

	rc = apb_manifest_read(src, APB_V1_HEADER_LEN, len, &text, err,
			       err_len);
	if (rc)
		goto out;
	m->data_start = APB_V1_HEADER_LEN + len;
	rc = parse_json((const char *)text, (size_t)len, &root, &hints, err,
			err_len);
	if (rc)
		goto out;
	rc = json_models(root, (size_t)len, version, &hints, m, &ref, err,
			 err_len);
	if (rc == 0 && table) {
		*table = ref;
		table->spare = text; /* for the block table (v2.c) */
		text = NULL;
	}
out:
	free(text);
	if (rc)
		apb_manifest_free(m);
	return rc;
}
