/*
 * v2.c - format version 2: the block table and verified reads by block.
 *
 * bundle.c parses the JSON manifest (versions 1 and 2 share it) and calls
 * in here twice at open: apb_v2_table_read() to load the table (one pread)
 * and apb_v2_check_blocks() after the checks every layout shares. The
 * table rules, each with its own message:
 *
 *   - count <= APB_BLOCKS_MAX; offset a multiple of 8, after the manifest,
 *     count * 24 bytes inside the file; the XXH3 of those bytes matches
 *     "chunk_table"."checksum" (checked before any entry is believed);
 *   - a model's entries "first_chunk" .. "first_chunk" + block_count - 1
 *     lie in the table (an empty model's "first_chunk" is at most the
 *     count; the manifest keys keep their on-disk spelling); an offset or
 *     stored size the model's manifest entry leaves out is then taken
 *     from them (the first entry's offset, the last entry's end), which
 *     must not end before the offset;
 *   - flags: bit 0 (zstd) only, and only in a "zstd" model;
 *   - a raw entry starts on a multiple of 4096 and stores exactly the
 *     block's uncompressed length; a zstd entry is 1 ..
 *     ZSTD_compressBound(uncompressed length) bytes;
 *   - a model's entries lie inside its stored bytes, in increasing offset
 *     order, without overlap; a "none" model's entry i is at offset +
 *     i * block_size (the model is one contiguous range);
 *   - every entry belongs to exactly one model;
 *   - the table does not overlap any model's stored bytes.
 *
 * What cannot be seen without reading the data (a frame that decodes to
 * the wrong length, a checksum that does not match) is found by reads:
 * every block a read touches is read whole, decompressed if it is a frame,
 * and hashed; a failure is read once more (a transient fault of the
 * storage should not fail the reader) and then reported as -EBADMSG.
 *
 * Words: a block is the bundle's stored unit (a model's bytes are cut
 * into blocks of its block_size, each one table entry); a chunk is the
 * daemon cache's unit, which it asks for through apb_bundle_preadv(). The
 * two sizes are independent: one cache chunk may span several blocks or
 * part of one, and the destination iovec here is the cache's chunk slots.
 *
 * Reads: a run of whole raw blocks adjacent in the file goes into the
 * destination with one preadv() and is hashed there, with no context: the
 * daemon's page-ins of raw blocks take no lock of ours. Any other block (a
 * frame, or a raw block only partly wanted) is read in a stage: a context
 * taken from a small pool and a window on the stored bytes, refilled by one
 * apb_source_preadv() at a time. A raw block's bytes are hashed and copied
 * out of the window, a frame's fed to zstd, which decodes into the whole
 * block's bytes: straight into the destination when the block is wanted
 * whole there in one buffer, else into scratch of the block's size.
 *
 * Stages (apb_v2_stage_plan()). From a local file a stage is one block and
 * its window the context's PIECE-byte buffer: the block's stored bytes are
 * streamed through it, so reading a frame costs no memory of its stored
 * size, and a read of a few more pieces costs no more than it did. From a
 * remote source every read is a request with a round trip, and a block of
 * 64 KiB is a request of its own that way, a large frame one per PIECE: so
 * a stage there takes every further block of the read (frames, raw blocks
 * whole or not) whose stored bytes follow the last one's with a gap of less
 * than APB_ALIGN (a raw block's alignment), while the span of their stored
 * bytes is at most APB_V2_STAGE_MAX and the span plus the largest scratch a
 * block of them needs is at most APB_BLOCK_SIZE_MAX; its window is the
 * span, at most APB_V2_STAGE_MAX and APB_BLOCK_SIZE_MAX less that scratch
 * (never less than PIECE; at PIECE the context's buffer serves). A cache
 * run of a zstd model is then one request, not one per block, and a block
 * larger than the window a request per window. A block that fails its check
 * is read once more on its own, not from the window's copy.
 *
 * The memory bound: a block may be up to APB_BLOCK_SIZE_MAX (16 MiB), and
 * every concurrent page-in might want a part of a different frame. So each
 * stage first reserves what it will hold (CTX_BYTES, plus a window larger
 * than PIECE, plus the largest scratch a block of it needs) against
 * SCRATCH_MAX for the whole reader, and waits while the reservations of
 * the page-ins running now leave no room; one always runs. The rules above
 * keep one stage's reservation at most CTX_BYTES + APB_BLOCK_SIZE_MAX, so
 * scratch bytes in flight are at most max(SCRATCH_MAX, CTX_BYTES +
 * APB_BLOCK_SIZE_MAX) = 16.5 MiB, whatever the number of readers, plus at
 * most POOL_IDLE_MAX idle contexts of CTX_BYTES + SCRATCH_KEEP each.
 * Scratch above SCRATCH_KEEP is its own mapping, unmapped after its
 * block, and so is a window above PIECE, after its stage.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_d_stableOutBuffer */
#include <zstd.h>

#include "apbundle/bundle.h"
#include "format.h"
#include "lock.h"

#define PIECE (128u << 10)        /* stored bytes read at a time from a file */
#define SCRATCH_KEEP (256u << 10) /* block scratch a context keeps */
/* What a context in use holds besides block scratch: the piece buffer and
 * a ZSTD_DCtx with its one zstd block of input (222 KiB with zstd 1.5). */
#define CTX_BYTES (512u << 10)
#define SCRATCH_MAX (16u << 20)   /* reserved by all page-ins at once */
#define POOL_IDLE_MAX 4

/* ---- the table at open ------------------------------------------------- */

/* Whether struct apb_block_entry is laid out as a table entry's 24 bytes
 * (docs/FORMAT.md): little-endian, no padding. A constant the compiler
 * folds. */
static bool entries_are_raw(void)
{
	const uint16_t one = 1;

	return sizeof(struct apb_block_entry) == APB_V2_ENTRY_LEN &&
	       offsetof(struct apb_block_entry, length) == 8 &&
	       offsetof(struct apb_block_entry, flags) == 12 &&
	       offsetof(struct apb_block_entry, xxh3) == 16 &&
	       *(const uint8_t *)&one == 1;
}

/* Each model's entries must lie in the table; an offset or stored size
 * its manifest entry left out is then its blocks' extent, and an empty
 * model's is nothing at the end of the manifest (docs/FORMAT.md). */
static int model_extents(struct apb_manifest *mf, char *err, size_t err_len)
{
	char q[APB_QUOTE_MAX];

	for (size_t i = 0; i < mf->count; i++) {
		struct apb_model *m = &mf->models[i];
		const struct apb_block_entry *last;
		uint64_t n = mf->block_count, end;

		if (m->first_block > n || m->block_count > n - m->first_block)
			return apb_errf(err, err_len,
					"model '%s': its %llu blocks from table entry %llu run past the block table (%llu entries)",
					apb_mq(m, q),
					(unsigned long long)m->block_count,
					(unsigned long long)m->first_block,
					(unsigned long long)n);
		if (m->block_count == 0) {
			if (m->offset == APB_V2_FROM_TABLE)
				m->offset = mf->data_start;
			if (m->stored_size == APB_V2_FROM_TABLE)
				m->stored_size = 0;
			continue;
		}
		if (m->offset == APB_V2_FROM_TABLE)
			m->offset = mf->blocks[m->first_block].offset;
		if (m->stored_size != APB_V2_FROM_TABLE)
			continue;
		last = &mf->blocks[m->first_block + m->block_count - 1];
		end = last->offset + last->length;
		if (end < last->offset || end < m->offset)
			return apb_errf(err, err_len,
					"model '%s': its last block (table entry %llu, %u bytes at offset %llu) does not end between its offset %llu and 2^64",
					apb_mq(m, q),
					(unsigned long long)(m->first_block +
							     m->block_count - 1),
					last->length,
					(unsigned long long)last->offset,
					(unsigned long long)m->offset);
		m->stored_size = end - m->offset;
	}
	return 0;
}

/* The table's count and place against the limit, the manifest and the
 * file. */
static int table_place(const struct apb_v2_table_ref *table,
		       const struct apb_manifest *m, uint64_t size, char *err,
		       size_t err_len)
{
	uint64_t off = table->offset, count = table->count, len;

	if (count > APB_BLOCKS_MAX)
		return apb_errf(err, err_len,
				"chunk_table: 'count' %llu exceeds the limit of %u",
				(unsigned long long)count, APB_BLOCKS_MAX);
	if (off % APB_V2_TABLE_ALIGN)
		return apb_errf(err, err_len,
				"chunk_table: offset %llu is not a multiple of %u",
				(unsigned long long)off, APB_V2_TABLE_ALIGN);
	if (off < m->data_start)
		return apb_errf(err, err_len,
				"chunk_table: offset %llu is inside the header and manifest (which end at %llu)",
				(unsigned long long)off,
				(unsigned long long)m->data_start);
	len = count * APB_V2_ENTRY_LEN; /* <= 384 MiB: no overflow */
	if (off > size || len > size - off)
		return apb_errf(err, err_len,
				"chunk_table: %llu entries (%llu bytes at offset %llu) run past end of file (%llu bytes)",
				(unsigned long long)count,
				(unsigned long long)len,
				(unsigned long long)off,
				(unsigned long long)size);
	return 0;
}

int apb_v2_table_read(const struct apb_source *src,
		      struct apb_v2_table_ref *table, struct apb_manifest *m,
		      char *err, size_t err_len)
{
	uint64_t off = table->offset, count = table->count;
	uint64_t xxh3 = table->xxh3, size = apb_source_size(src);
	uint64_t len, got;
	uint8_t *raw, *spare = table->spare;
	struct apb_block_entry *blocks;
	int rc;

	table->spare = NULL;
	rc = table_place(table, m, size, err, err_len);
	if (rc) {
		free(spare);
		return rc;
	}
	len = count * APB_V2_ENTRY_LEN; /* <= 384 MiB: no overflow */
	/* The entries go into the manifest's buffer, resized: the parse has
	 * touched its pages, and a fresh buffer's first touch is what costs
	 * (10,000 entries: 59 pages, about 0.1 ms on a VM whose host faults
	 * each page in, docs/PERFORMANCE.md). */
	blocks = realloc(spare, count ? (size_t)count * sizeof *blocks : 1);
	if (!blocks)
		free(spare); /* realloc() failed: spare is still ours */
	m->blocks = blocks;
	/* Where the table's bytes are the entries' (a little-endian host
	 * with no padding) they are read straight into them: a copy of the
	 * table would cost its pages' first touch again. */
	raw = entries_are_raw() ? (uint8_t *)m->blocks
				: malloc(len ? (size_t)len : 1);
	if (!raw || !m->blocks) {
		if (raw != (uint8_t *)m->blocks)
			free(raw);
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for %llu block table entries",
				(unsigned long long)count);
	}
	rc = apb_source_pread(src, raw, (size_t)len, off);
	if (rc) {
		rc = apb_fail(rc, err, err_len,
			      "cannot read the block table: %s",
			      strerror(-rc));
		goto out;
	}
	got = XXH3_64bits(raw, (size_t)len);
	if (got != xxh3) {
		rc = apb_errf(err, err_len,
			      "chunk_table: checksum mismatch: the manifest says xxh3-64:%016llx, the table's %llu bytes hash to xxh3-64:%016llx",
			      (unsigned long long)xxh3,
			      (unsigned long long)len,
			      (unsigned long long)got);
		goto out;
	}
	if (raw == (uint8_t *)m->blocks)
		goto out;
	for (uint64_t i = 0; i < count; i++) {
		const uint8_t *p = raw + i * APB_V2_ENTRY_LEN;

		m->blocks[i] = (struct apb_block_entry){
			.offset = apb_le64(p), .length = apb_le32(p + 8),
			.flags = apb_le32(p + 12), .xxh3 = apb_le64(p + 16)};
	}
out:
	if (raw != (uint8_t *)m->blocks)
		free(raw);
	if (rc)
		return rc;
	m->block_count = count;
	m->table_offset = off;
	return model_extents(m, err, err_len);
}

/* ---- the rules that tie entries to models ------------------------------ */

/* Uncompressed bytes of block i of m. */
static size_t block_len(const struct apb_model *m, uint64_t i)
{
	uint64_t left = m->size - i * m->block_size;

	return (size_t)(left < m->block_size ? left : m->block_size);
}

/* Put "model 'x' block i (table entry j): " before the message in err.
 * Only an entry that is wrong pays for it: a bundle of a million blocks
 * would otherwise format a million prefixes at every open. */
static int entry_err(const struct apb_model *m, uint64_t i, char *err,
		     size_t err_len, int rc)
{
	char q[APB_QUOTE_MAX], what[256];

	snprintf(what, sizeof what, "%s", err ? err : "");
	return apb_fail(rc, err, err_len,
			"model '%s' block %llu (table entry %llu): %s",
			apb_mq(m, q), (unsigned long long)i,
			(unsigned long long)(m->first_block + i), what);
}

/* One entry of m, block i; prev_end: where the previous block ended. */
static int check_entry(const struct apb_model *m, uint64_t i,
		       const struct apb_block_entry *e, uint64_t prev_end,
		       char *err, size_t err_len)
{
	uint64_t end = m->offset + m->stored_size; /* checked at open */
	size_t ulen = block_len(m, i);

	if (e->flags & ~APB_BLOCK_ZSTD)
		return apb_errf(err, err_len, "unknown flags 0x%08x",
				e->flags);
	if ((e->flags & APB_BLOCK_ZSTD) &&
	    m->compression != APB_COMPRESSION_ZSTD)
		return apb_errf(err, err_len,
				"a zstd frame in a model whose compression is 'none'");
	if (!(e->flags & APB_BLOCK_ZSTD)) {
		if (e->offset % APB_ALIGN)
			return apb_errf(err, err_len,
					"raw block offset %llu is not a multiple of %u",
					(unsigned long long)e->offset,
					APB_ALIGN);
		if (e->length != ulen)
			return apb_errf(err, err_len,
					"raw block stores %u bytes, not the block's %zu",
					e->length, ulen);
	} else if (e->length == 0 || e->length > ZSTD_compressBound(ulen)) {
		return apb_errf(err, err_len,
				"zstd frame of %u bytes is outside 1 .. %zu (the bound for %zu bytes)",
				e->length, ZSTD_compressBound(ulen), ulen);
	}
	if (e->offset < prev_end)
		return i == 0 ? apb_errf(err, err_len,
					 "offset %llu is before the model's stored bytes (offset %llu)",
					 (unsigned long long)e->offset,
					 (unsigned long long)m->offset)
			      : apb_errf(err, err_len,
					 "offset %llu is before the end of block %llu (%llu); blocks must be in offset order without overlap",
					 (unsigned long long)e->offset,
					 (unsigned long long)(i - 1),
					 (unsigned long long)prev_end);
	if (e->offset > end || e->length > end - e->offset)
		return apb_errf(err, err_len,
				"%u bytes at offset %llu run past the model's stored bytes (which end at %llu)",
				e->length, (unsigned long long)e->offset,
				(unsigned long long)end);
	if (m->compression == APB_COMPRESSION_NONE &&
	    e->offset != m->offset + i * m->block_size)
		return apb_errf(err, err_len,
				"offset %llu is not %llu: a 'none' model's blocks lie back to back from its offset",
				(unsigned long long)e->offset,
				(unsigned long long)(m->offset + i * m->block_size));
	return 0;
}

static int check_model(const struct apb_manifest *mf,
		       const struct apb_model *m, char *err, size_t err_len)
{
	uint64_t prev_end = m->offset;
	int rc;

	/* The entries lie in the table (model_extents()). */
	for (uint64_t i = 0; i < m->block_count; i++) {
		const struct apb_block_entry *e = &mf->blocks[m->first_block + i];

		rc = check_entry(m, i, e, prev_end, err, err_len);
		if (rc)
			return entry_err(m, i, err, err_len, rc);
		prev_end = e->offset + e->length;
	}
	return 0;
}

static int cmp_by_first_block(const void *a, const void *b)
{
	const struct apb_model *x = *(const struct apb_model *const *)a;
	const struct apb_model *y = *(const struct apb_model *const *)b;

	if (x->first_block != y->first_block)
		return x->first_block < y->first_block ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* The next model in table order, cur, must start where the previous
 * one, far, ended (*next); cur becomes far. */
static int tile_step(const struct apb_model *cur,
		     const struct apb_model **far, uint64_t *next, char *err,
		     size_t err_len)
{
	char qa[APB_QUOTE_MAX], qb[APB_QUOTE_MAX];

	if (cur->first_block < *next)
		return apb_errf(err, err_len,
				"block table entry %llu is used by models '%s' and '%s'",
				(unsigned long long)cur->first_block,
				apb_mq(*far, qa), apb_mq(cur, qb));
	if (cur->first_block > *next)
		return apb_errf(err, err_len,
				"block table entries %llu .. %llu are used by no model",
				(unsigned long long)*next,
				(unsigned long long)(cur->first_block - 1));
	*far = cur;
	*next = cur->first_block + cur->block_count;
	return 0;
}

/* The models' entry ranges, in table order, must tile the table exactly.
 * Writers lay the entries out in manifest order: then the models are
 * walked as they are, and only another order pays for a sorted copy. */
static int check_coverage(const struct apb_manifest *mf, char *err,
			  size_t err_len)
{
	const struct apb_model **by = NULL, *far = NULL, *prev = NULL;
	uint64_t next = 0; /* first entry not yet used */
	bool ordered = true;
	size_t n = 0;
	int rc = 0;

	for (size_t i = 0; i < mf->count && ordered; i++) {
		const struct apb_model *cur = &mf->models[i];

		if (!cur->block_count)
			continue;
		ordered = !prev || cmp_by_first_block(&prev, &cur) < 0;
		prev = cur;
	}
	if (ordered) {
		for (size_t i = 0; i < mf->count && rc == 0; i++)
			if (mf->models[i].block_count)
				rc = tile_step(&mf->models[i], &far, &next,
					       err, err_len);
	} else {
		by = malloc(mf->count * sizeof *by);
		if (!by)
			return apb_fail(-ENOMEM, err, err_len,
					"out of memory");
		for (size_t i = 0; i < mf->count; i++)
			if (mf->models[i].block_count)
				by[n++] = &mf->models[i];
		qsort(by, n, sizeof *by, cmp_by_first_block);
		for (size_t i = 0; i < n && rc == 0; i++)
			rc = tile_step(by[i], &far, &next, err, err_len);
		free(by);
	}
	if (rc == 0 && next < mf->block_count)
		rc = apb_errf(err, err_len,
			      "block table entries %llu .. %llu are used by no model",
			      (unsigned long long)next,
			      (unsigned long long)(mf->block_count - 1));
	return rc;
}

int apb_v2_check_blocks(const struct apb_manifest *mf, char *err,
			size_t err_len)
{
	uint64_t t = mf->table_offset;
	uint64_t tlen = mf->block_count * APB_V2_ENTRY_LEN;
	char q[APB_QUOTE_MAX];
	int rc;

	for (size_t i = 0; i < mf->count; i++) {
		const struct apb_model *m = &mf->models[i];

		rc = check_model(mf, m, err, err_len);
		if (rc)
			return rc;
		if (tlen && m->stored_size && m->offset < t + tlen &&
		    t < m->offset + m->stored_size)
			return apb_errf(err, err_len,
					"block table (bytes %llu to %llu) overlaps model '%s' (bytes %llu to %llu)",
					(unsigned long long)t,
					(unsigned long long)(t + tlen),
					apb_mq(m, q),
					(unsigned long long)m->offset,
					(unsigned long long)(m->offset + m->stored_size));
	}
	return check_coverage(mf, err, err_len);
}

/* ---- contexts and the scratch bound ------------------------------------ */

struct ctx {
	ZSTD_DCtx *z;   /* made at the first frame this context decodes */
	uint8_t *piece; /* PIECE bytes, 4096-aligned: stored bytes in transit */
	uint8_t *out;   /* SCRATCH_KEEP bytes for small blocks, kept */
};

struct apb_v2_reader {
	struct apb_mutex mu;
	pthread_cond_t turn;   /* scratch returned, or the queue moved */
	size_t scratch;        /* bytes reserved by the page-ins running now */
	uint64_t next, serving; /* tickets: reservations in arrival order */
	struct ctx *idle[POOL_IDLE_MAX];
	int nidle;
};

static void ctx_free(struct ctx *c)
{
	if (!c)
		return;
	ZSTD_freeDCtx(c->z);
	free(c->piece);
	free(c->out);
	free(c);
}

int apb_v2_reader_new(struct apb_v2_reader **out)
{
	struct apb_v2_reader *r = calloc(1, sizeof *r);

	if (!r)
		return -ENOMEM;
	if (apb_mutex_init(&r->mu) != 0) {
		free(r);
		return -ENOMEM;
	}
	if (pthread_cond_init(&r->turn, NULL) != 0) {
		apb_mutex_destroy(&r->mu);
		free(r);
		return -ENOMEM;
	}
	*out = r;
	return 0;
}

void apb_v2_reader_free(struct apb_v2_reader *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->nidle; i++)
		ctx_free(r->idle[i]);
	pthread_cond_destroy(&r->turn);
	apb_mutex_destroy(&r->mu);
	free(r);
}

/*
 * A context for one stage, with need bytes of scratch reserved for it: the
 * caller waits until the reservation fits under SCRATCH_MAX next to those
 * of the page-ins running now, or until none runs (so a stage whose need
 * alone exceeds the bound still proceeds, alone). Reservations are granted
 * in arrival order, so a large one is not starved by a stream of small
 * ones. A page-in holds one reservation at a time and waits for nothing
 * while holding it, so the wait always ends.
 */
static struct ctx *ctx_take(struct apb_v2_reader *r, size_t need)
{
	struct ctx *c = NULL;
	uint64_t ticket;

	apb_mutex_lock(&r->mu);
	ticket = r->next++;
	while (r->serving != ticket ||
	       (r->scratch > 0 && r->scratch + need > SCRATCH_MAX))
		apb_cond_wait(&r->turn, &r->mu);
	r->serving++;
	r->scratch += need;
	if (r->nidle > 0)
		c = r->idle[--r->nidle];
	pthread_cond_broadcast(&r->turn); /* the next ticket may fit too */
	apb_mutex_unlock(&r->mu);
	if (c)
		return c;
	c = calloc(1, sizeof *c);
	if (c)
		c->piece = aligned_alloc(APB_ALIGN, PIECE);
	if (!c || !c->piece) {
		free(c);
		apb_mutex_lock(&r->mu);
		r->scratch -= need;
		pthread_cond_broadcast(&r->turn);
		apb_mutex_unlock(&r->mu);
		return NULL;
	}
	return c;
}

/* Give c back and release its reservation. */
static void ctx_give(struct apb_v2_reader *r, struct ctx *c, size_t need)
{
	apb_mutex_lock(&r->mu);
	r->scratch -= need;
	if (r->nidle < POOL_IDLE_MAX) {
		r->idle[r->nidle++] = c;
		c = NULL;
	}
	pthread_cond_broadcast(&r->turn);
	apb_mutex_unlock(&r->mu);
	ctx_free(c);
}

/* A ZSTD_DCtx whose output is always the whole block (stable): it then
 * allocates no window buffer of its own, only one zstd block of input. */
static int ctx_dctx(struct ctx *c)
{
	if (c->z)
		return 0;
	c->z = ZSTD_createDCtx();
	if (!c->z)
		return -ENOMEM;
	/* The window a frame declares costs nothing with a stable output
	 * (the output is the window), so any frame the one-shot decoder
	 * took is still taken. */
	if (ZSTD_isError(ZSTD_DCtx_setParameter(c->z, ZSTD_d_stableOutBuffer,
						1)) ||
	    ZSTD_isError(ZSTD_DCtx_setParameter(c->z, ZSTD_d_windowLogMax,
						ZSTD_WINDOWLOG_MAX))) {
		ZSTD_freeDCtx(c->z);
		c->z = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* n bytes of a mapping of their own, unmapped after use so that their
 * pages return to the system at once (freed heap memory may stay
 * resident; see docs/DESIGN.md, "Memory of the process"). Huge pages are
 * asked for: every byte of it is written at once, and with 4 KiB pages
 * the first writes cost a fault per page (a 4 MiB window: 1.7 ms of
 * faults, 0.2 ms with huge pages, on the test VM). */
static uint8_t *map_get(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, n, MADV_HUGEPAGE);
	return p;
}

/* Scratch for a whole block of ulen bytes: the context's own buffer for a
 * small block (kept for the next), else a mapping of its own, unmapped by
 * scratch_put(). */
static uint8_t *scratch_get(struct ctx *c, size_t ulen)
{
	if (ulen <= SCRATCH_KEEP) {
		if (!c->out)
			c->out = malloc(SCRATCH_KEEP);
		return c->out;
	}
	return map_get(ulen);
}

static void scratch_put(uint8_t *p, size_t ulen)
{
	if (p && ulen > SCRATCH_KEEP)
		munmap(p, ulen);
}

/* ---- the destination: a position in an iovec array --------------------- */

struct dest {
	const struct iovec *iov;
	int cnt;
	int i;       /* current buffer; cnt when all are used */
	size_t skip; /* bytes of iov[i] already used */
};

static void dest_advance(struct dest *d, size_t n)
{
	d->skip += n;
	while (d->i < d->cnt && d->skip >= d->iov[d->i].iov_len) {
		d->skip -= d->iov[d->i].iov_len;
		d->i++;
	}
}

/* The next n bytes as one pointer, when they lie in one buffer. */
static uint8_t *dest_flat(const struct dest *d, size_t n)
{
	if (d->i < d->cnt && d->iov[d->i].iov_len - d->skip >= n)
		return (uint8_t *)d->iov[d->i].iov_base + d->skip;
	return NULL;
}

static void dest_copy(struct dest *d, const uint8_t *src, size_t n)
{
	while (n > 0) {
		size_t k = d->iov[d->i].iov_len - d->skip;

		if (k > n)
			k = n;
		memcpy((uint8_t *)d->iov[d->i].iov_base + d->skip, src, k);
		src += k;
		n -= k;
		dest_advance(d, k);
	}
}

/* XXH3 of the next n bytes of d (d itself does not move). */
static uint64_t dest_hash(struct dest d, size_t n)
{
	const uint8_t *flat = dest_flat(&d, n);
	XXH3_state_t st;

	if (flat)
		return XXH3_64bits(flat, n);
	XXH3_64bits_reset(&st);
	while (n > 0) {
		size_t k = d.iov[d.i].iov_len - d.skip;

		if (k > n)
			k = n;
		XXH3_64bits_update(&st,
				   (const uint8_t *)d.iov[d.i].iov_base + d.skip,
				   k);
		n -= k;
		dest_advance(&d, k);
	}
	return XXH3_64bits_digest(&st);
}

/* ---- reads through a window -------------------------------------------- */

/* A window on the stored bytes of a stage (see apb_v2_stage_plan()): the
 * bytes [lo, hi) of the file are in buf; a read outside them refills it
 * with the next min(cap, end - off) bytes, one apb_source_preadv(). */
struct feed {
	const struct apb_source *src;
	uint8_t *buf;
	size_t cap;
	uint64_t lo, hi;
	uint64_t end; /* no byte at or after this is read */
};

/* The stored bytes at off, at most n of them: *p and *got (> 0), or the
 * read errno. off < f->end. */
static int feed_at(struct feed *f, uint64_t off, uint64_t n,
		   const uint8_t **p, size_t *got)
{
	if (off < f->lo || off >= f->hi) {
		size_t len = f->end - off < f->cap ? (size_t)(f->end - off)
						   : f->cap;
		struct iovec v = {.iov_base = f->buf, .iov_len = len};
		long r = apb_source_preadv(f->src, off, &v, 1, 0, len);

		f->lo = f->hi = 0;
		if (r < 0)
			return (int)r;
		f->lo = off;
		f->hi = off + len;
	}
	*p = f->buf + (off - f->lo);
	*got = f->hi - off < n ? (size_t)(f->hi - off) : (size_t)n;
	return 0;
}

/* One try at frame e into out (ulen bytes, the whole block), its stored
 * bytes fed from the window: 0 when it is exactly one frame that decodes
 * to exactly ulen bytes with the right hash, 1 when not, or the read
 * errno. */
static int try_frame(struct feed *f, struct ctx *c,
		     const struct apb_block_entry *e, size_t ulen,
		     uint8_t *out)
{
	ZSTD_outBuffer o = {.dst = out, .size = ulen, .pos = 0};
	size_t left = 1; /* zstd's hint; 0 once the frame is complete */
	int rc;

	if (ZSTD_isError(ZSTD_DCtx_reset(c->z, ZSTD_reset_session_only)))
		return 1;
	for (uint64_t at = 0; at < e->length;) {
		const uint8_t *p;
		size_t n;
		ZSTD_inBuffer i;

		rc = feed_at(f, e->offset + at, e->length - at, &p, &n);
		if (rc)
			return rc;
		i = (ZSTD_inBuffer){.src = p, .size = n, .pos = 0};
		while (i.pos < i.size) {
			size_t was_in = i.pos, was_out = o.pos;

			/* Bytes after the frame's end would be data the
			 * checksum never saw. */
			if (left == 0)
				return 1;
			left = ZSTD_decompressStream(c->z, &o, &i);
			if (ZSTD_isError(left) ||
			    (i.pos == was_in && o.pos == was_out && left))
				return 1;
		}
		at += i.size;
	}
	if (left != 0 || o.pos != ulen)
		return 1;
	return XXH3_64bits(out, ulen) == e->xxh3 ? 0 : 1;
}

/* One try at bytes [in, in + len) of raw block e (ulen bytes) into d:
 * the whole block is fed from the window and hashed, the wanted bytes
 * copied out of it. 0 when the hash matches (d moved past the bytes), 1
 * when not, or the read errno. */
static int try_raw_part(struct feed *f, const struct apb_block_entry *e,
			size_t ulen, size_t in, size_t len, struct dest *d)
{
	XXH3_state_t st;
	int rc;

	XXH3_64bits_reset(&st);
	for (size_t at = 0; at < ulen;) {
		const uint8_t *p;
		size_t n, lo, hi;

		rc = feed_at(f, e->offset + at, ulen - at, &p, &n);
		if (rc)
			return rc;
		lo = at > in ? at : in;
		hi = at + n < in + len ? at + n : in + len;
		XXH3_64bits_update(&st, p, n);
		if (lo < hi)
			dest_copy(d, p + (lo - at), hi - lo);
		at += n;
	}
	return XXH3_64bits_digest(&st) == e->xxh3 ? 0 : 1;
}

/* Bytes [in, in + len) of block bi into d, verified, with one more try
 * after a failure, which reads the block again on its own (not the
 * window's copy of it): 0, -EBADMSG, -ENOMEM or the read errno. A frame
 * wanted whole whose destination is one buffer is decoded straight into
 * it; another frame needs scratch of the block's size, which the stage's
 * reservation covers. */
static int read_block(struct feed *f, struct ctx *c,
		      const struct apb_model *m,
		      const struct apb_block_entry *e, uint64_t bi, size_t in,
		      size_t len, struct dest *d)
{
	size_t ulen = block_len(m, bi);
	bool frame = e->flags & APB_BLOCK_ZSTD;
	uint8_t *flat = in == 0 && len == ulen ? dest_flat(d, ulen) : NULL;
	uint64_t stage_end = f->end;
	struct dest at = *d;
	uint8_t *out = NULL;
	int rc = 1; /* 1: not read yet */

	if (frame) {
		out = flat ? flat : scratch_get(c, ulen);
		if (!out || ctx_dctx(c) != 0)
			rc = -ENOMEM;
	}
	for (int tries = 0; tries < 2 && rc == 1; tries++) {
		if (tries > 0) {
			f->lo = f->hi = 0;
			f->end = e->offset + e->length;
		}
		*d = at;
		rc = frame ? try_frame(f, c, e, ulen, out)
			   : try_raw_part(f, e, ulen, in, len, d);
	}
	f->end = stage_end;
	if (rc == 0 && frame) {
		if (flat)
			dest_advance(d, ulen);
		else
			dest_copy(d, out + in, len);
	}
	if (out != flat)
		scratch_put(out, ulen);
	return rc == 1 ? -EBADMSG : rc;
}

/* The wanted bytes of block j from pos (inside it) up to end: *in, and
 * the length. */
static size_t wanted(const struct apb_model *m, uint64_t j, uint64_t pos,
		     uint64_t end, size_t *in)
{
	size_t ulen = block_len(m, j);

	*in = (size_t)(pos - j * m->block_size);
	return end - pos < ulen - *in ? (size_t)(end - pos) : ulen - *in;
}

static void stage_plan(const struct apb_model *m,
		       const struct apb_block_entry *t, uint64_t pos,
		       uint64_t end, struct dest d, bool remote,
		       struct apb_v2_stage *st)
{
	uint64_t bi = pos / m->block_size, prev_end = t[bi].offset;

	*st = (struct apb_v2_stage){0};
	for (uint64_t j = bi; j < m->block_count && pos < end; j++) {
		const struct apb_block_entry *e = &t[j];
		size_t in, len = wanted(m, j, pos, end, &in);
		size_t ulen = block_len(m, j);
		bool whole_flat = in == 0 && len == ulen && dest_flat(&d, ulen);
		size_t need = (e->flags & APB_BLOCK_ZSTD) && !whole_flat ? ulen
									 : 0;
		size_t scratch = need > st->scratch ? need : st->scratch;
		uint64_t span = e->offset + e->length - t[bi].offset;

		if (j > bi && (!remote || e->offset - prev_end >= APB_ALIGN ||
			       span > APB_V2_STAGE_MAX ||
			       span + scratch > APB_BLOCK_SIZE_MAX))
			break;
		st->blocks++;
		st->span = span;
		st->scratch = scratch;
		prev_end = e->offset + e->length;
		dest_advance(&d, len);
		pos += len;
	}
	st->window = PIECE;
	if (remote) {
		uint64_t w = st->span < APB_V2_STAGE_MAX ? st->span
							 : APB_V2_STAGE_MAX;

		if (w > APB_BLOCK_SIZE_MAX - st->scratch)
			w = APB_BLOCK_SIZE_MAX - st->scratch;
		if (w > PIECE)
			st->window = (size_t)w;
	}
}

void apb_v2_stage_plan(const struct apb_model *m,
		       const struct apb_block_entry *table, uint64_t pos,
		       uint64_t end, const struct iovec *iov, int iovcnt,
		       bool remote, struct apb_v2_stage *st)
{
	struct dest d = {.iov = iov, .cnt = iovcnt};

	dest_advance(&d, 0);
	stage_plan(m, table + m->first_block, pos, end, d, remote, st);
}

/* The stage st, which begins at *pos, into d: its blocks through one
 * context and its window, *pos moved past them. 0, -EBADMSG with *bad
 * set, -ENOMEM or the read errno. */
static int read_stage(const struct apb_source *src, struct apb_v2_reader *r,
		      const struct apb_model *m,
		      const struct apb_block_entry *t,
		      const struct apb_v2_stage *st, uint64_t *pos,
		      uint64_t end, struct dest *d, uint64_t *bad)
{
	uint64_t bi = *pos / m->block_size;
	bool own = st->window > PIECE; /* else the context's piece buffer */
	size_t need = CTX_BYTES + st->scratch + (own ? st->window : 0);
	struct feed f = {.src = src, .cap = st->window,
			 .end = t[bi].offset + st->span};
	struct ctx *c = ctx_take(r, need);
	int rc = 0;

	if (!c)
		return -ENOMEM;
	f.buf = own ? map_get(st->window) : c->piece;
	if (!f.buf)
		rc = -ENOMEM;
	for (uint64_t j = bi; j < bi + st->blocks && rc == 0; j++) {
		size_t in, len = wanted(m, j, *pos, end, &in);

		rc = read_block(&f, c, m, &t[j], j, in, len, d);
		if (rc == -EBADMSG)
			*bad = j;
		*pos += len;
	}
	if (own && f.buf) /* a mapping of its own, as large scratch is */
		munmap(f.buf, st->window);
	ctx_give(r, c, need);
	return rc;
}

/* Whole raw blocks from bi on that lie back to back in the file and end
 * at or before byte end of the model: their count, and *bytes. */
static uint64_t raw_run(const struct apb_model *m,
			const struct apb_block_entry *t, uint64_t bi,
			uint64_t end, size_t *bytes)
{
	uint64_t n = 0, pos = bi * m->block_size;

	*bytes = 0;
	while (bi + n < m->block_count) {
		const struct apb_block_entry *e = &t[bi + n];
		size_t ulen = block_len(m, bi + n);

		if ((e->flags & APB_BLOCK_ZSTD) || end - pos < ulen ||
		    (n > 0 && e->offset != e[-1].offset + e[-1].length))
			break;
		pos += ulen;
		*bytes += ulen;
		n++;
	}
	return n;
}

/* A run of n whole raw blocks from bi straight into d, hashed there; a
 * block that fails is read again on its own. */
static int read_run(const struct apb_source *src, const struct apb_model *m,
		    const struct apb_block_entry *t, uint64_t bi, uint64_t n,
		    size_t bytes, struct dest *d, uint64_t *bad)
{
	long got = apb_source_preadv(src, t[bi].offset, d->iov + d->i,
					   d->cnt - d->i, d->skip, bytes);

	if (got < 0)
		return (int)got;
	for (uint64_t k = bi; k < bi + n; k++) {
		size_t ulen = block_len(m, k);

		if (dest_hash(*d, ulen) != t[k].xxh3) {
			got = apb_source_preadv(src, t[k].offset,
						      d->iov + d->i,
						      d->cnt - d->i, d->skip,
						      ulen);
			if (got < 0)
				return (int)got;
			if (dest_hash(*d, ulen) != t[k].xxh3) {
				*bad = k;
				return -EBADMSG;
			}
		}
		dest_advance(d, ulen);
	}
	return 0;
}

long apb_v2_preadv(const struct apb_source *src, struct apb_v2_reader *r,
		   const struct apb_model *m,
		   const struct apb_block_entry *table, uint64_t off,
		   const struct iovec *iov, int iovcnt, size_t want,
		   uint64_t *bad_block)
{
	const struct apb_block_entry *t = table + m->first_block;
	struct dest d = {.iov = iov, .cnt = iovcnt};
	uint64_t pos = off, end = off + want, bad = 0;
	bool remote = apb_source_is_remote(src);
	int rc = 0;

	dest_advance(&d, 0);
	while (pos < end && rc == 0) {
		uint64_t bi = pos / m->block_size;
		size_t bytes;
		uint64_t n = pos == bi * m->block_size
				     ? raw_run(m, t, bi, end, &bytes) : 0;
		struct apb_v2_stage st;

		if (n > 0) {
			rc = read_run(src, m, t, bi, n, bytes, &d, &bad);
			pos += bytes;
		} else {
			stage_plan(m, t, pos, end, d, remote, &st);
			rc = read_stage(src, r, m, t, &st, &pos, end, &d, &bad);
		}
	}
	if (rc == -EBADMSG && bad_block)
		*bad_block = bad;
	return rc ? rc : (long)want;
}
