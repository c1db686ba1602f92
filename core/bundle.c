/*
 * bundle.c - open, validate and read an .apbundle file.
 *
 * Opening is a pipeline that trusts nothing until the end:
 *
 *   1. fixed header: at least 16 bytes, magic "APBUNDLE", u32 LE version.
 *      Versions 1 and 2 are read; anything else is refused by number.
 *      Version 2 has one layout: byte 16 must be '{' (JSON manifest, u32
 *      length), then its block table is read and checksummed (v2.c).
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
 *      checks every block table entry against its model (v2.c lists the
 *      rules: flags, alignment, lengths, order, containment, coverage).
 *   4. models are sorted by name (strcmp order); index = identity.
 *
 * The JSON manifests' own rules are listed in manifest_json.c, aprender's
 * in aprender.c, version 2's block table's in v2.c.
 *
 * Cost: O(n log n) in the number of models (one sort by name, one by
 * offset, binary searches for the name set); allocations are bounded by
 * APB_MANIFEST_MAX and APB_MODELS_MAX before they are made, and a JSON
 * manifest costs one pool for its names besides the models.
 *
 * Layers, each using only those below it: bundle.c (this file: open,
 * dispatch, the shared checks, reads by model) -> the parsers
 * (manifest_json.c, aprender.c) and v2.c (the block table and reads by
 * block) -> manifest.c (reading a manifest, freeing the table) ->
 * source.c (the file's bytes), with json.c, name.c and checksum.c beside.
 *
 * Thread safety: a bundle never changes after open (apb_bundle_direct_io()
 * included, which is called before sharing); reads go to its source, which
 * any number of threads may read at once.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"
#include "format.h"


struct apb_bundle {
	struct apb_source *src;   /* the file's bytes */
	enum apb_layout layout;
	struct apb_model *models; /* count entries, sorted by name */
	size_t count;
	char *names;              /* pool the model names point into */
	struct apb_block_entry *blocks; /* version 2: the block table */
	uint64_t block_count;
	struct apb_v2_reader *reader;   /* version 2: scratch, zstd contexts */
};

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

/* A file whose byte 16 does not open a JSON manifest, said in terms of
 * the JSON manifest, the documented format. */
static int not_json(const uint8_t *head, char *err, size_t err_len)
{
	return apb_errf(err, err_len,
			"manifest must begin with '{' (found byte 0x%02x at offset %u)",
			head[APB_V1_HEADER_LEN], APB_V1_HEADER_LEN);
}

/* Magic and version; picks the layout parser, and for version 2 reads the
 * block table the manifest points at. */
static int parse_any(const struct apb_source *src, enum apb_layout *layout,
		     struct apb_manifest *m, char *err, size_t err_len)
{
	size_t head_len;
	const uint8_t *head = apb_source_head(src, &head_len);
	struct apb_v2_table_ref table = {0};
	uint32_t version;
	int rc;

	if (head_len < APB_V1_HEADER_LEN)
		return apb_errf(err, err_len,
				"file is %llu bytes, shorter than the %u-byte header",
				(unsigned long long)apb_source_size(src),
				APB_V1_HEADER_LEN);
	if (memcmp(head, APB_MAGIC, APB_MAGIC_LEN) != 0)
		return apb_errf(err, err_len,
				"not an apbundle file (bad magic)");
	version = apb_le32(head + APB_MAGIC_LEN);
	if (version != 1 && version != 2)
		return apb_errf(err, err_len,
				"unsupported format version %u (this apbundlefs reads 1 and 2)",
				version);
	if (version == 2) {
		/* Version 2 has one layout: the JSON manifest, u32 length. */
		if (head_len > APB_V1_HEADER_LEN &&
		    head[APB_V1_HEADER_LEN] != '{')
			return not_json(head, err, err_len);
		*layout = APB_LAYOUT_V2;
		rc = apb_json_manifest_parse(src, 2, m, &table, err, err_len);
		if (rc == 0)
			rc = apb_v2_table_read(src, &table, m, err, err_len);
		if (rc)
			apb_manifest_free(m);
		return rc;
	}
	if (head_len > APB_V1_HEADER_LEN && head[APB_V1_HEADER_LEN] != '{') {
		/* Bytes 16..19 are the high half of aprender's u64 manifest
		 * length: non-zero would mean a manifest of 4 GiB or more, far
		 * past APB_MANIFEST_MAX, so the file is neither layout. Say so
		 * in terms of the JSON manifest, the documented format. */
		if (head_len >= APB_APRENDER_HEADER_LEN &&
		    apb_le32(head + APB_V1_HEADER_LEN) != 0)
			return not_json(head, err, err_len);
		*layout = APB_LAYOUT_APRENDER;
		return apb_aprender_parse(src, m, err, err_len);
	}
	*layout = APB_LAYOUT_V1;
	return apb_json_manifest_parse(src, 1, m, NULL, err, err_len);
}

int apb_bundle_open(const char *path, struct apb_bundle **out, char *err,
		    size_t err_len)
{
	return apb_bundle_open_ex(path, NULL, out, err, err_len);
}

int apb_bundle_open_ex(const char *path_or_url,
		       const struct apb_bundle_options *o,
		       struct apb_bundle **out, char *err, size_t err_len)
{
	struct apb_manifest m = {0};
	struct apb_v2_reader *reader = NULL;
	struct apb_bundle *b = NULL;
	struct apb_source *src = NULL;
	enum apb_layout layout = APB_LAYOUT_V1;
	int rc;

	*out = NULL;
	rc = apb_source_open(path_or_url, o, &src, err, err_len);
	if (rc)
		goto out;
	rc = parse_any(src, &layout, &m, err, err_len);
	if (rc)
		goto out;
	rc = finish_models(&m, apb_source_size(src), err, err_len);
	if (rc == 0 && layout == APB_LAYOUT_V2)
		rc = apb_v2_check_blocks(&m, err, err_len);
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
	*b = (struct apb_bundle){.src = src, .layout = layout,
				 .models = m.models, .count = m.count,
				 .names = m.names, .blocks = m.blocks,
				 .block_count = m.block_count,
				 .reader = reader};
	*out = b;
	return 0;
out:
	apb_v2_reader_free(reader);
	apb_manifest_free(&m);
	apb_source_close(src);
	return rc;
}

void apb_bundle_close(struct apb_bundle *b)
{
	if (!b)
		return;
	apb_source_close(b->src);
	apb_v2_reader_free(b->reader);
	free(b->models);
	free(b->names);
	free(b->blocks);
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

long apb_bundle_read(const struct apb_bundle *b, size_t index, uint64_t off,
		     void *buf, size_t len)
{
	struct iovec v = {.iov_base = buf, .iov_len = len};

	return apb_bundle_preadv(b, index, off, &v, 1, NULL);
}

long apb_bundle_preadv(const struct apb_bundle *b, size_t index, uint64_t off,
		       const struct iovec *iov, int iovcnt,
		       uint64_t *bad_block)
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
		return apb_source_preadv(b->src, m->offset + off, iov, iovcnt,
					 0, (size_t)want);
	case APB_LAYOUT_V2:
		return apb_v2_preadv(b->src, b->reader, m, b->blocks, off, iov,
				     iovcnt, (size_t)want, bad_block);
	}
	return -EINVAL;
}

int apb_bundle_direct_io(struct apb_bundle *b)
{
	return apb_source_direct_io(b->src);
}

const struct stat *apb_bundle_stat(const struct apb_bundle *b)
{
	return apb_source_stat(b->src);
}

int apb_bundle_disk_tier_stats(const struct apb_bundle *b,
			       struct apb_bundle_disk_tier_stats *st)
{
	return apb_source_disk_tier_stats(b->src, st);
}

int apb_bundle_remote_stats(const struct apb_bundle *b,
			    struct apb_bundle_remote_stats *st)
{
	return apb_source_remote_stats(b->src, st);
}
