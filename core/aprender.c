/*
 * aprender.c - the .apbundle layout that aprender's own code writes
 * (docs/FORMAT.md, "aprender's layout"), read into the common model table of
 * format.h.
 *
 *   0   8  magic "APBUNDLE"
 *   8   4  u32 LE version (1; checked by bundle.c)
 *   12  8  u64 LE manifest length L
 *   20  L  binary manifest, all integers little-endian:
 *            u32 manifest version (not interpreted), u64 created_at,
 *            u32 description length + bytes, u32 model count,
 *            per model: u32 name length + name bytes, u64 size, u64 offset
 *   20+L   model data, packed, no alignment, no checksum
 *
 * Offsets are relative to the end of the manifest; the table holds absolute
 * ones (20 + L + offset, overflow-checked). Every length is checked against
 * the bytes left in the manifest before it is used, the model count against
 * APB_MODELS_MAX and against what the remaining bytes could hold before
 * anything is allocated, and leftover manifest bytes are an error (they
 * would mean we misread the layout).
 *
 * The manifest is walked twice: the first walk validates and adds up the
 * name bytes, the second fills the exactly sized name pool.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apbundle/name.h"
#include "format.h"

#define ENTRY_MIN 20u /* u32 name length + u64 size + u64 offset */

/* A bounds-checked read position in the manifest. */
struct cursor {
	const uint8_t *base;
	size_t len;
	size_t pos;
	char *err;
	size_t err_len;
};

#define NO_MODEL SIZE_MAX

/* Take n bytes: "what" of model i (or of the preamble, i == NO_MODEL).
 * NULL, with the message set, if the manifest ends first. */
static const uint8_t *take(struct cursor *c, size_t n, size_t i,
			   const char *what)
{
	const uint8_t *p;
	char model[48] = "";

	if (n > c->len - c->pos) {
		if (i != NO_MODEL)
			snprintf(model, sizeof model, "model %zu ", i);
		apb_errf(c->err, c->err_len,
			 "aprender manifest ends early: %s%s needs %zu bytes at manifest byte %zu, only %zu left",
			 model, what, n, c->pos, c->len - c->pos);
		return NULL;
	}
	p = c->base + c->pos;
	c->pos += n;
	return p;
}

static bool take_u32(struct cursor *c, uint32_t *v, size_t i,
		     const char *what)
{
	const uint8_t *p = take(c, 4, i, what);

	if (p)
		*v = apb_le32(p);
	return p != NULL;
}

static bool take_u64(struct cursor *c, uint64_t *v, size_t i,
		     const char *what)
{
	const uint8_t *p = take(c, 8, i, what);

	if (p)
		*v = apb_le64(p);
	return p != NULL;
}

/* Everything before the model entries; returns the model count. */
static int read_preamble(struct cursor *c, size_t *count)
{
	uint32_t version, desc_len, n;
	uint64_t created_at;

	if (!take_u32(c, &version, NO_MODEL, "the manifest version") ||
	    !take_u64(c, &created_at, NO_MODEL, "created_at") ||
	    !take_u32(c, &desc_len, NO_MODEL, "the description length") ||
	    !take(c, desc_len, NO_MODEL, "the description") ||
	    !take_u32(c, &n, NO_MODEL, "the model count"))
		return -EINVAL;
	if (n > APB_MODELS_MAX)
		return apb_errf(c->err, c->err_len,
				"aprender manifest: model count %u exceeds the limit of %u",
				n, APB_MODELS_MAX);
	if ((uint64_t)n * ENTRY_MIN > c->len - c->pos)
		return apb_errf(c->err, c->err_len,
				"aprender manifest: %u models cannot fit in the %zu bytes left",
				n, c->len - c->pos);
	*count = n;
	return 0;
}

/*
 * Entry i. With pool == NULL validates it and adds the name's bytes to
 * *name_bytes; otherwise (second walk, already valid) also copies the
 * name to pool + *name_bytes.
 */
static int read_entry(struct cursor *c, size_t i, uint64_t data_start,
		      struct apb_model *m, char *pool, size_t *name_bytes)
{
	const uint8_t *name;
	uint32_t name_len;
	int rc;

	if (!take_u32(c, &name_len, i, "name length"))
		return -EINVAL;
	name = take(c, name_len, i, "name");
	if (!name)
		return -EINVAL;
	if (!pool) {
		rc = apb_name_check((const char *)name, name_len, c->err,
				    c->err_len);
		if (rc)
			return rc;
	}
	if (!take_u64(c, &m->size, i, "size") ||
	    !take_u64(c, &m->offset, i, "offset"))
		return -EINVAL;
	if (m->offset > UINT64_MAX - data_start) {
		char q[APB_QUOTE_MAX];

		return apb_errf(c->err, c->err_len,
				"model '%s': offset %llu (relative to the data start %llu) overflows",
				apb_name_quote((const char *)name, name_len, q,
					       sizeof q),
				(unsigned long long)m->offset,
				(unsigned long long)data_start);
	}
	m->offset += data_start;
	m->stored_size = m->size;
	m->has_checksum = false;
	m->xxh3 = 0;
	if (pool) {
		memcpy(pool + *name_bytes, name, name_len);
		pool[*name_bytes + name_len] = '\0';
		m->name = pool + *name_bytes;
	}
	*name_bytes += (size_t)name_len + 1;
	return 0;
}

/* One walk over the manifest; see read_entry() for pool. */
static int walk(const uint8_t *text, size_t len, struct apb_manifest *m,
		char *pool, size_t *name_bytes, char *err, size_t err_len)
{
	struct cursor c = {.base = text, .len = len, .err = err,
			   .err_len = err_len};
	size_t count = 0;
	int rc;

	rc = read_preamble(&c, &count);
	if (rc)
		return rc;
	if (!m->models) {
		m->models = calloc(count ? count : 1, sizeof *m->models);
		if (!m->models)
			return apb_fail(-ENOMEM, err, err_len,
					"out of memory for %zu models", count);
		m->count = count;
	}
	*name_bytes = 0;
	for (size_t i = 0; i < count; i++) {
		rc = read_entry(&c, i, m->data_start, &m->models[i], pool,
				name_bytes);
		if (rc)
			return rc;
	}
	if (c.pos != c.len)
		return apb_errf(err, err_len,
				"%zu trailing bytes after the last model entry in the manifest",
				c.len - c.pos);
	return 0;
}

int apb_aprender_parse(const struct apb_source *src, struct apb_manifest *out,
		       char *err, size_t err_len)
{
	uint8_t *text = NULL;
	size_t name_bytes = 0, head_len;
	const uint8_t *head = apb_source_head(src, &head_len);
	uint64_t len;
	int rc;

	memset(out, 0, sizeof *out);
	if (head_len < APB_APRENDER_HEADER_LEN)
		return apb_errf(err, err_len,
				"file is %llu bytes, shorter than the %u-byte header of the aprender layout",
				(unsigned long long)apb_source_size(src),
				APB_APRENDER_HEADER_LEN);
	len = apb_le64(head + APB_MAGIC_LEN + 4);
	rc = apb_manifest_read(src, APB_APRENDER_HEADER_LEN, len, &text, err,
			       err_len);
	if (rc)
		goto out;
	out->data_start = APB_APRENDER_HEADER_LEN + len;
	rc = walk(text, (size_t)len, out, NULL, &name_bytes, err, err_len);
	if (rc)
		goto out;
	out->names = malloc(name_bytes ? name_bytes : 1);
	if (!out->names) {
		rc = apb_fail(-ENOMEM, err, err_len,
			      "out of memory for model names");
		goto out;
	}
	rc = walk(text, (size_t)len, out, out->names, &name_bytes, err,
		  err_len);
out:
	free(text);
	if (rc)
		apb_manifest_free(out);
	return rc;
}
