/*
 * v2.c - format version 2: the chunk table and verified chunked reads.
 *
 * bundle.c parses the JSON manifest (versions 1 and 2 share it) and calls
 * in here twice at open: apb_v2_table_read() to load the table (one pread)
 * and apb_v2_check_chunks() after the checks every layout shares. The
 * table rules, each with its own message:
 *
 *   - count <= APB_CHUNKS_MAX; offset a multiple of 8, after the manifest,
 *     count * 24 bytes inside the file; the XXH3 of those bytes matches
 *     "chunk_table"."checksum" (checked before any entry is believed);
 *   - a model's entries first_chunk .. first_chunk + chunk_count - 1 lie in
 *     the table (an empty model's first_chunk is at most the count);
 *   - flags: bit 0 (zstd) only, and only in a "zstd" model;
 *   - a raw entry starts on a multiple of 4096 and stores exactly the
 *     chunk's uncompressed length; a zstd entry is 1 ..
 *     ZSTD_compressBound(uncompressed length) bytes;
 *   - a model's entries lie inside its stored bytes, in increasing offset
 *     order, without overlap; a "none" model's entry i is at offset +
 *     i * chunk_size (the model is one contiguous range);
 *   - every entry belongs to exactly one model;
 *   - the table does not overlap any model's stored bytes.
 *
 * What cannot be seen without reading the data (a frame that decodes to
 * the wrong length, a checksum that does not match) is found by reads:
 * every chunk a read touches is read whole, decompressed if it is a frame,
 * and hashed; a failure is read once more (a transient fault of the
 * storage should not fail the reader) and then reported as -EBADMSG.
 *
 * Reads: a run of whole raw chunks adjacent in the file goes into the
 * destination with one preadv() and is hashed there, with no context: the
 * daemon's page-ins of raw chunks take no lock of ours. A chunk only
 * partly wanted, or a frame, goes through the scratch buffers of a context
 * taken from a small pool when the read first needs one (a whole frame
 * whose destination is one buffer is decompressed straight into it).
 * Contexts hold a ZSTD_DCtx and the scratch buffers; at most POOL_IDLE_MAX
 * stay allocated while idle, and scratch larger than SCRATCH_KEEP is freed
 * after use, so idle memory stays bounded whatever the bundle's chunk size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#include <zstd.h>

#include "apbundle/bundle.h"
#include "format.h"

#define POOL_IDLE_MAX 8
#define SCRATCH_KEEP (1u << 20)

/* ---- the table at open ------------------------------------------------- */

int apb_v2_table_read(const struct apb_source *src, uint64_t off,
		      uint64_t count, uint64_t xxh3, struct apb_manifest *m,
		      char *err, size_t err_len)
{
	uint64_t len, got;
	uint8_t *raw;
	int rc;

	if (count > APB_CHUNKS_MAX)
		return apb_errf(err, err_len,
				"chunk_table: 'count' %llu exceeds the limit of %u",
				(unsigned long long)count, APB_CHUNKS_MAX);
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
	if (off > src->file_size || len > src->file_size - off)
		return apb_errf(err, err_len,
				"chunk_table: %llu entries (%llu bytes at offset %llu) run past end of file (%llu bytes)",
				(unsigned long long)count,
				(unsigned long long)len,
				(unsigned long long)off,
				(unsigned long long)src->file_size);
	raw = malloc(len ? (size_t)len : 1);
	m->chunks = calloc(count ? (size_t)count : 1, sizeof *m->chunks);
	if (!raw || !m->chunks) {
		free(raw);
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for %llu chunk table entries",
				(unsigned long long)count);
	}
	rc = apb_pread_full(src->fd, raw, (size_t)len, off);
	if (rc) {
		free(raw);
		return apb_fail(rc, err, err_len,
				"cannot read the chunk table: %s",
				strerror(-rc));
	}
	got = XXH3_64bits(raw, (size_t)len);
	if (got != xxh3) {
		free(raw);
		return apb_errf(err, err_len,
				"chunk_table: checksum mismatch: the manifest says xxh3-64:%016llx, the table's %llu bytes hash to xxh3-64:%016llx",
				(unsigned long long)xxh3,
				(unsigned long long)len,
				(unsigned long long)got);
	}
	for (uint64_t i = 0; i < count; i++) {
		const uint8_t *p = raw + i * APB_V2_ENTRY_LEN;

		m->chunks[i] = (struct apb_chunk_entry){
			.offset = apb_le64(p), .length = apb_le32(p + 8),
			.flags = apb_le32(p + 12), .xxh3 = apb_le64(p + 16)};
	}
	free(raw);
	m->chunk_count = count;
	m->table_offset = off;
	return 0;
}

/* ---- the rules that tie entries to models ------------------------------ */

/* Uncompressed bytes of chunk i of m. */
static size_t chunk_len(const struct apb_model *m, uint64_t i)
{
	uint64_t left = m->size - i * m->chunk_size;

	return (size_t)(left < m->chunk_size ? left : m->chunk_size);
}

/* One entry of m, chunk i; prev_end: where the previous chunk ended. */
static int check_entry(const struct apb_model *m, uint64_t i,
		       const struct apb_chunk_entry *e, uint64_t prev_end,
		       char *err, size_t err_len)
{
	uint64_t end = m->offset + m->stored_size; /* checked at open */
	size_t ulen = chunk_len(m, i);
	char q[APB_QUOTE_MAX], at[APB_QUOTE_MAX + 64];

	snprintf(at, sizeof at, "model '%s' chunk %llu (table entry %llu)",
		 apb_mq(m, q), (unsigned long long)i,
		 (unsigned long long)(m->first_chunk + i));
	if (e->flags & ~APB_CHUNK_ZSTD)
		return apb_errf(err, err_len, "%s: unknown flags 0x%08x",
				at, e->flags);
	if ((e->flags & APB_CHUNK_ZSTD) &&
	    m->compression != APB_COMPRESSION_ZSTD)
		return apb_errf(err, err_len,
				"%s: a zstd frame in a model whose compression is 'none'",
				at);
	if (!(e->flags & APB_CHUNK_ZSTD)) {
		if (e->offset % APB_ALIGN)
			return apb_errf(err, err_len,
					"%s: raw chunk offset %llu is not a multiple of %u",
					at, (unsigned long long)e->offset,
					APB_ALIGN);
		if (e->length != ulen)
			return apb_errf(err, err_len,
					"%s: raw chunk stores %u bytes, not the chunk's %zu",
					at, e->length, ulen);
	} else if (e->length == 0 || e->length > ZSTD_compressBound(ulen)) {
		return apb_errf(err, err_len,
				"%s: zstd frame of %u bytes is outside 1 .. %zu (the bound for %zu bytes)",
				at, e->length, ZSTD_compressBound(ulen), ulen);
	}
	if (e->offset < prev_end)
		return i == 0 ? apb_errf(err, err_len,
					 "%s: offset %llu is before the model's stored bytes (offset %llu)",
					 at, (unsigned long long)e->offset,
					 (unsigned long long)m->offset)
			      : apb_errf(err, err_len,
					 "%s: offset %llu is before the end of chunk %llu (%llu); chunks must be in offset order without overlap",
					 at, (unsigned long long)e->offset,
					 (unsigned long long)(i - 1),
					 (unsigned long long)prev_end);
	if (e->offset > end || e->length > end - e->offset)
		return apb_errf(err, err_len,
				"%s: %u bytes at offset %llu run past the model's stored bytes (which end at %llu)",
				at, e->length, (unsigned long long)e->offset,
				(unsigned long long)end);
	if (m->compression == APB_COMPRESSION_NONE &&
	    e->offset != m->offset + i * m->chunk_size)
		return apb_errf(err, err_len,
				"%s: offset %llu is not %llu: a 'none' model's chunks lie back to back from its offset",
				at, (unsigned long long)e->offset,
				(unsigned long long)(m->offset + i * m->chunk_size));
	return 0;
}

static int check_model(const struct apb_manifest *mf,
		       const struct apb_model *m, char *err, size_t err_len)
{
	uint64_t n = mf->chunk_count, prev_end = m->offset;
	char q[APB_QUOTE_MAX];
	int rc;

	if (m->first_chunk > n || m->chunk_count > n - m->first_chunk)
		return apb_errf(err, err_len,
				"model '%s': its %llu chunks from table entry %llu run past the chunk table (%llu entries)",
				apb_mq(m, q),
				(unsigned long long)m->chunk_count,
				(unsigned long long)m->first_chunk,
				(unsigned long long)n);
	for (uint64_t i = 0; i < m->chunk_count; i++) {
		const struct apb_chunk_entry *e = &mf->chunks[m->first_chunk + i];

		rc = check_entry(m, i, e, prev_end, err, err_len);
		if (rc)
			return rc;
		prev_end = e->offset + e->length;
	}
	return 0;
}

static int cmp_by_first_chunk(const void *a, const void *b)
{
	const struct apb_model *x = *(const struct apb_model *const *)a;
	const struct apb_model *y = *(const struct apb_model *const *)b;

	if (x->first_chunk != y->first_chunk)
		return x->first_chunk < y->first_chunk ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* The models' entry ranges, in table order, must tile the table exactly. */
static int check_coverage(const struct apb_manifest *mf, char *err,
			  size_t err_len)
{
	const struct apb_model **by = malloc((mf->count ? mf->count : 1) *
					     sizeof *by);
	const struct apb_model *far = NULL;
	uint64_t next = 0; /* first entry not yet used */
	size_t n = 0;
	char qa[APB_QUOTE_MAX], qb[APB_QUOTE_MAX];
	int rc = 0;

	if (!by)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	for (size_t i = 0; i < mf->count; i++)
		if (mf->models[i].chunk_count)
			by[n++] = &mf->models[i];
	qsort(by, n, sizeof *by, cmp_by_first_chunk);
	for (size_t i = 0; i < n && rc == 0; i++) {
		const struct apb_model *cur = by[i];

		if (cur->first_chunk < next)
			rc = apb_errf(err, err_len,
				      "chunk table entry %llu is used by models '%s' and '%s'",
				      (unsigned long long)cur->first_chunk,
				      apb_mq(far, qa), apb_mq(cur, qb));
		else if (cur->first_chunk > next)
			rc = apb_errf(err, err_len,
				      "chunk table entries %llu .. %llu are used by no model",
				      (unsigned long long)next,
				      (unsigned long long)(cur->first_chunk - 1));
		far = cur;
		next = cur->first_chunk + cur->chunk_count;
	}
	if (rc == 0 && next < mf->chunk_count)
		rc = apb_errf(err, err_len,
			      "chunk table entries %llu .. %llu are used by no model",
			      (unsigned long long)next,
			      (unsigned long long)(mf->chunk_count - 1));
	free(by);
	return rc;
}

int apb_v2_check_chunks(const struct apb_manifest *mf, char *err,
			size_t err_len)
{
	uint64_t t = mf->table_offset;
	uint64_t tlen = mf->chunk_count * APB_V2_ENTRY_LEN;
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
					"chunk table (bytes %llu to %llu) overlaps model '%s' (bytes %llu to %llu)",
					(unsigned long long)t,
					(unsigned long long)(t + tlen),
					apb_mq(m, q),
					(unsigned long long)m->offset,
					(unsigned long long)(m->offset + m->stored_size));
	}
	return check_coverage(mf, err, err_len);
}

/* ---- contexts ---------------------------------------------------------- */

struct ctx {
	ZSTD_DCtx *z;
	uint8_t *out, *in; /* scratch: a chunk's bytes, a frame's bytes */
	size_t out_cap, in_cap;
};

struct apb_v2_reader {
	pthread_mutex_t mu;
	struct ctx *idle[POOL_IDLE_MAX];
	int nidle;
};

static void ctx_free(struct ctx *c)
{
	if (!c)
		return;
	ZSTD_freeDCtx(c->z);
	free(c->out);
	free(c->in);
	free(c);
}

int apb_v2_reader_new(struct apb_v2_reader **out)
{
	struct apb_v2_reader *r = calloc(1, sizeof *r);

	if (!r)
		return -ENOMEM;
	if (pthread_mutex_init(&r->mu, NULL) != 0) {
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
	pthread_mutex_destroy(&r->mu);
	free(r);
}

static struct ctx *ctx_get(struct apb_v2_reader *r)
{
	struct ctx *c = NULL;

	pthread_mutex_lock(&r->mu);
	if (r->nidle > 0)
		c = r->idle[--r->nidle];
	pthread_mutex_unlock(&r->mu);
	if (c)
		return c;
	c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->z = ZSTD_createDCtx();
	if (!c->z) {
		ctx_free(c);
		return NULL;
	}
	return c;
}

static void ctx_put(struct apb_v2_reader *r, struct ctx *c)
{
	if (c->out_cap > SCRATCH_KEEP) {
		free(c->out);
		c->out = NULL;
		c->out_cap = 0;
	}
	if (c->in_cap > SCRATCH_KEEP) {
		free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
	pthread_mutex_lock(&r->mu);
	if (r->nidle < POOL_IDLE_MAX) {
		r->idle[r->nidle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&r->mu);
	ctx_free(c);
}

static int grow(uint8_t **p, size_t *cap, size_t want)
{
	uint8_t *n;

	if (want <= *cap)
		return 0;
	n = realloc(*p, want);
	if (!n)
		return -ENOMEM;
	*p = n;
	*cap = want;
	return 0;
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

/* ---- reads ------------------------------------------------------------- */

/* One try at chunk e (ulen bytes uncompressed) into out: 0 when it
 * decoded to exactly ulen bytes with the right hash, 1 when not, or the
 * read errno. */
static int try_chunk(const struct apb_bundle *b, struct ctx *c,
		     const struct apb_chunk_entry *e, size_t ulen,
		     uint8_t *out)
{
	struct iovec v = {.iov_base = out, .iov_len = ulen};
	long r;
	size_t got;

	if (!(e->flags & APB_CHUNK_ZSTD)) {
		r = apb_bundle_pread_stored(b, e->offset, &v, 1, 0, ulen);
		if (r < 0)
			return (int)r;
	} else {
		if (grow(&c->in, &c->in_cap, e->length))
			return -ENOMEM;
		v = (struct iovec){.iov_base = c->in, .iov_len = e->length};
		r = apb_bundle_pread_stored(b, e->offset, &v, 1, 0, e->length);
		if (r < 0)
			return (int)r;
		/* One frame, exactly: trailing bytes or a second frame
		 * would be data the checksum never saw. */
		if (ZSTD_findFrameCompressedSize(c->in, e->length) != e->length)
			return 1;
		got = ZSTD_decompressDCtx(c->z, out, ulen, c->in, e->length);
		if (ZSTD_isError(got) || got != ulen)
			return 1;
	}
	return XXH3_64bits(out, ulen) == e->xxh3 ? 0 : 1;
}

/* Chunk e into out, verified, with one more try: 0, -EBADMSG or errno. */
static int load_chunk(const struct apb_bundle *b, struct ctx *c,
		      const struct apb_chunk_entry *e, size_t ulen,
		      uint8_t *out)
{
	int rc = try_chunk(b, c, e, ulen, out);

	if (rc == 1)
		rc = try_chunk(b, c, e, ulen, out);
	return rc == 1 ? -EBADMSG : rc;
}

/* Bytes [in, in + len) of chunk ci into d, through scratch unless the
 * whole chunk is wanted and its destination is one buffer. */
static int read_one(const struct apb_bundle *b, struct ctx *c,
		    const struct apb_model *m,
		    const struct apb_chunk_entry *e, uint64_t ci, size_t in,
		    size_t len, struct dest *d)
{
	size_t ulen = chunk_len(m, ci);
	uint8_t *flat = in == 0 && len == ulen ? dest_flat(d, ulen) : NULL;
	int rc;

	if (flat) {
		rc = load_chunk(b, c, e, ulen, flat);
		if (!rc)
			dest_advance(d, ulen);
		return rc;
	}
	rc = grow(&c->out, &c->out_cap, ulen);
	if (!rc)
		rc = load_chunk(b, c, e, ulen, c->out);
	if (!rc)
		dest_copy(d, c->out + in, len);
	return rc;
}

/* Whole raw chunks from ci on that lie back to back in the file and end
 * at or before byte end of the model: their count, and *bytes. */
static uint64_t raw_run(const struct apb_model *m,
			const struct apb_chunk_entry *t, uint64_t ci,
			uint64_t end, size_t *bytes)
{
	uint64_t n = 0, pos = ci * m->chunk_size;

	*bytes = 0;
	while (ci + n < m->chunk_count) {
		const struct apb_chunk_entry *e = &t[ci + n];
		size_t ulen = chunk_len(m, ci + n);

		if ((e->flags & APB_CHUNK_ZSTD) || end - pos < ulen ||
		    (n > 0 && e->offset != e[-1].offset + e[-1].length))
			break;
		pos += ulen;
		*bytes += ulen;
		n++;
	}
	return n;
}

/* A run of n whole raw chunks from ci straight into d, hashed there; a
 * chunk that fails is read again on its own. */
static int read_run(const struct apb_bundle *b, const struct apb_model *m,
		    const struct apb_chunk_entry *t, uint64_t ci, uint64_t n,
		    size_t bytes, struct dest *d, uint64_t *bad)
{
	long got = apb_bundle_pread_stored(b, t[ci].offset, d->iov + d->i,
					   d->cnt - d->i, d->skip, bytes);

	if (got < 0)
		return (int)got;
	for (uint64_t k = ci; k < ci + n; k++) {
		size_t ulen = chunk_len(m, k);

		if (dest_hash(*d, ulen) != t[k].xxh3) {
			got = apb_bundle_pread_stored(b, t[k].offset,
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

long apb_v2_preadv(const struct apb_bundle *b, struct apb_v2_reader *r,
		   const struct apb_model *m,
		   const struct apb_chunk_entry *table, uint64_t off,
		   const struct iovec *iov, int iovcnt, size_t want,
		   uint64_t *bad_chunk)
{
	const struct apb_chunk_entry *t = table + m->first_chunk;
	struct dest d = {.iov = iov, .cnt = iovcnt};
	uint64_t pos = off, end = off + want, bad = 0;
	struct ctx *c = NULL; /* taken when a chunk needs scratch */
	int rc = 0;

	dest_advance(&d, 0);
	while (pos < end && rc == 0) {
		uint64_t ci = pos / m->chunk_size, start = ci * m->chunk_size;
		size_t ulen = chunk_len(m, ci), bytes;
		uint64_t n = pos == start ? raw_run(m, t, ci, end, &bytes) : 0;

		if (n > 0) {
			rc = read_run(b, m, t, ci, n, bytes, &d, &bad);
			pos += bytes;
		} else if (!c && !(c = ctx_get(r))) {
			rc = -ENOMEM;
		} else {
			size_t in = (size_t)(pos - start);
			size_t len = end - pos < ulen - in ? (size_t)(end - pos)
							   : ulen - in;

			rc = read_one(b, c, m, &t[ci], ci, in, len, &d);
			if (rc == -EBADMSG)
				bad = ci;
			pos += len;
		}
	}
	if (c)
		ctx_put(r, c);
	if (rc == -EBADMSG && bad_chunk)
		*bad_chunk = bad;
	return rc ? rc : (long)want;
}
