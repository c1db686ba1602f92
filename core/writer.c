/*
 * writer.c - write .apbundle files (formats 1 and 2) and extract models,
 * atomically.
 *
 * Layout of a version-1 bundle (docs/FORMAT.md):
 *
 *   0          "APBUNDLE", u32 LE version 1, u32 LE manifest length L
 *   16         the manifest, L bytes of unformatted JSON
 *   16 + L     zero bytes up to D = the next multiple of 4096
 *   D          model 0, zero bytes up to the next multiple of 4096, model 1…
 *
 * Models are sorted by name (strcmp) and model i starts at
 * offset(i) = align4096(offset(i-1) + size(i-1)), offset(0) = D. The file
 * ends at the end of the last model (or of the manifest when there are no
 * models); an empty model still gets an aligned offset inside the file.
 *
 * The circular dependency (L depends on the offsets printed in it, the
 * offsets depend on D, D on L) is solved by iteration: start with L = 0,
 * lay out, print, take the printed length as the new L, until it does not
 * change. L can only grow with D and D with L, and both are bounded, so
 * this reaches the smallest fixed point in a few rounds. Checksums are
 * unknown until the bytes are read, but their spelling has a fixed width
 * ("xxh3-64:" + 16 digits), so the layout prints zero placeholders and the
 * final manifest, printed after the copy, has exactly the same length; it
 * overwrites the placeholder at offset 16.
 *
 * Version 2 (docs/FORMAT.md) keeps the header and the JSON manifest, cuts
 * every model into blocks of block_size uncompressed bytes ("chunk_size"
 * in the manifest, which keeps the format's key names) and describes
 * each block in a table of 24-byte entries after all model data. Stored
 * sizes of compressed models are known only after compressing, so the
 * manifest length N is fixed before any data from an upper bound: the same
 * iteration as above, laid out with every model at its largest possible
 * stored size (each block raw, plus up to 4095 bytes of padding before
 * it). JSON numbers never get wider as values get smaller, so the final
 * manifest is at most N bytes; it is padded with spaces to exactly N.
 * Models still start at multiples of 4096; in a compressed model the
 * frames follow each other and a block that does not shrink is stored raw
 * at the next multiple of 4096. The table follows the data at the next
 * multiple of 8 and ends the file.
 *
 * Blocks are compressed and hashed by a pool of worker threads (one per
 * online CPU unless told otherwise) while this thread reads inputs ahead
 * and writes results strictly in order, so the bytes do not depend on the
 * number of threads. Work moves in batches of whole blocks (about 1 MiB)
 * through a fixed window of slots, which bounds memory.
 *
 * Invariants:
 *  - Nothing is created until options, names and inputs have been checked.
 *  - Each input's bytes are read exactly once and hashed as they are
 *    copied (an earlier open only proves it readable and takes its size).
 *    An input that is shorter or longer than it was when listed fails the
 *    write (a bundle never disagrees with its manifest), as does an input
 *    that is the very file being replaced.
 *  - Output goes through an atomic file (atomic.c): "OUT.tmp.XXXXXX" in
 *    OUT's directory, fsynced, renamed over OUT, the directory fsynced.
 *    Every failure before the rename unlinks the temporary file.
 *    Cancellation is polled once per buffer. Only a process that is killed
 *    outright (SIGKILL, power loss) can leave an "OUT.tmp.XXXXXX" behind;
 *    OUT itself is never partial.
 *  - Offsets and sizes stay below 2^53 so the JSON numbers (doubles in
 *    cJSON and most JSON tools) are exact.
 *
 * The file holds the two writers: bundle creation and model extraction.
 * Input lists and directory walks live in inputs.c, the temporary-file
 * machinery in atomic.c.
 */
#include "apbundle/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"

#include "atomic.h"
#include "error.h"
#include "format.h"
#include "json.h"
#include "lock.h"

#define COPY_BUF_BYTES (1u << 20)
#define LAYOUT_ROUNDS_MAX 64
#define BATCH_BYTES (1u << 20)   /* input bytes per unit of pool work */
#define WINDOW_BYTES (64u << 20) /* soft cap on the slots' buffers */

static const unsigned char zeros[APB_ALIGN];

static bool cancelled(const struct apb_writer_options *o)
{
	return o && o->cancel && *o->cancel;
}

static uint64_t align_up(uint64_t v)
{
	return (v + APB_ALIGN - 1) / APB_ALIGN * APB_ALIGN;
}

/* Where a format 2 block table may start: the next multiple of 8. */
static uint64_t table_align(uint64_t v)
{
	return (v + APB_V2_TABLE_ALIGN - 1) / APB_V2_TABLE_ALIGN *
	       APB_V2_TABLE_ALIGN;
}

/* ================================================================== */
/* Output helpers                                                      */
/* ================================================================== */

/* Write all of buf at the current offset, through EINTR and short writes. */
static int write_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static int write_zeros(int fd, uint64_t len)
{
	while (len > 0) {
		size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
		int rc = write_all(fd, zeros, n);

		if (rc)
			return rc;
		len -= n;
	}
	return 0;
}

/* ================================================================== */
/* Options                                                             */
/* ================================================================== */

void apb_writer_options_init(struct apb_writer_options *o)
{
	memset(o, 0, sizeof(*o));
	o->format = APB_WRITER_FORMAT_DEFAULT;
	o->compression = APB_WRITER_STORE;
}

int apb_writer_options_check(const struct apb_writer_options *o, char *err,
			     size_t err_len)
{
	if (o->format != 1 && o->format != 2) {
		apb_fail(0, err, err_len, "unknown format %u (expected 1 or 2)",
			o->format);
		return -EINVAL;
	}
	if (o->compression != APB_WRITER_STORE &&
	    o->compression != APB_WRITER_ZSTD) {
		apb_fail(0, err, err_len, "unknown compression");
		return -EINVAL;
	}
	if (o->block_size != 0 &&
	    (o->block_size % APB_BLOCK_SIZE_MIN != 0 ||
	     o->block_size > APB_BLOCK_SIZE_MAX)) {
		apb_fail(0, err, err_len,
			"block size %llu is not a multiple of 4096 from 4096 "
			"to 16 MiB", (unsigned long long)o->block_size);
		return -EINVAL;
	}
	if (o->compression_level < 0 ||
	    o->compression_level > ZSTD_maxCLevel()) {
		apb_fail(0, err, err_len, "zstd level %d is not 1 to %d",
			o->compression_level, ZSTD_maxCLevel());
		return -EINVAL;
	}
	if (o->format == 1 &&
	    (o->compression != APB_WRITER_STORE || o->block_size != 0)) {
		apb_fail(0, err, err_len,
			"compression and block size need format 2");
		return -EINVAL;
	}
	return 0;
}

/* ================================================================== */
/* Writing a bundle                                                    */
/* ================================================================== */

struct entry {
	const char *name; /* borrowed from the input list */
	const char *path;
	uint64_t size;
	uint64_t offset;
	uint64_t stored;      /* bytes in the file; format 2: an upper bound
			       * until the model is written */
	uint64_t xxh3;        /* 0 (placeholder) until copied */
	uint64_t first_block; /* format 2: its first block table entry */
};

struct pool;

struct job {
	const char *out_path;
	const struct apb_writer_options *o;
	struct entry *e;
	size_t n;
	uint64_t total, done;   /* model bytes, for progress */
	size_t manifest_len;    /* L (format 1) or N (format 2), by layout() */
	uint64_t pos;           /* output offset being written */
	uint64_t block_size;    /* format 2 */
	uint64_t entries;       /* format 2: block table entries */
	uint64_t table_off;     /* format 2: T */
	uint64_t table_xxh3;    /* format 2: 0 (placeholder) until written */
	unsigned char *table;   /* format 2: entries * 24 bytes */
	struct pool *pool;      /* format 2: block workers */
	dev_t out_dev;          /* the bundle being replaced, if any, */
	ino_t out_ino;          /* so it is not packed into itself */
	struct apb_atomic_file af;
	unsigned char *buf;
	XXH3_state_t *xxh;
	char *err;
	size_t err_len;
};

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->name,
		      ((const struct entry *)b)->name);
}

/* Sort by name, check each name, then the set (duplicates named with both
 * paths, then whatever apb_names_check_set() refuses). */
static int check_names(struct job *j)
{
	char msg[512];
	const char **names;
	int rc = 0;

	for (size_t i = 0; i < j->n; i++) {
		if (apb_name_check(j->e[i].name, strlen(j->e[i].name), msg,
				   sizeof(msg)) != 0) {
			/* msg starts "name ..." and quotes the name */
			apb_fail(0, j->err, j->err_len, "%s: model %s",
				j->e[i].path, msg);
			return -EINVAL;
		}
	}
	qsort(j->e, j->n, sizeof(*j->e), cmp_entry);
	for (size_t i = 1; i < j->n; i++) {
		if (strcmp(j->e[i - 1].name, j->e[i].name) == 0) {
			apb_fail(0, j->err, j->err_len,
				"%s: model name '%s' is also given by %s",
				j->e[i].path, j->e[i].name, j->e[i - 1].path);
			return -EINVAL;
		}
	}
	names = malloc((j->n ? j->n : 1) * sizeof(*names));
	if (!names)
		return -ENOMEM;
	for (size_t i = 0; i < j->n; i++)
		names[i] = j->e[i].name;
	if (apb_names_check_set(names, j->n, msg, sizeof(msg)) != 0) {
		apb_fail(0, j->err, j->err_len, "%s: %s", j->out_path, msg);
		rc = -EINVAL;
	}
	free(names);
	return rc;
}

/* Open every input once to prove it readable and learn its size. */
static int stat_inputs(struct job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		struct entry *e = &j->e[i];
		struct stat st;
		int fd = open(e->path, O_RDONLY | O_CLOEXEC);
		int rc = 0;

		if (fd < 0 || fstat(fd, &st) != 0)
			rc = -errno;
		else if (!S_ISREG(st.st_mode))
			rc = -EINVAL;
		else if (st.st_dev == j->out_dev && st.st_ino == j->out_ino)
			rc = -ELOOP;
		if (fd >= 0)
			close(fd);
		if (rc) {
			apb_fail(0, j->err, j->err_len, "%s: %s", e->path,
				rc == -EINVAL ? "not a regular file"
				: rc == -ELOOP ? "is the bundle being written"
					       : strerror(-rc));
			return rc;
		}
		e->size = (uint64_t)st.st_size;
		e->stored = e->size;
		if (e->size > (uint64_t)APB_JSON_EXACT_INT_MAX - j->total) {
			apb_fail(0, j->err, j->err_len,
				"%s: inputs too large for a bundle (2^53 bytes)",
				e->path);
			return -EFBIG;
		}
		j->total += e->size;
	}
	return 0;
}

static bool add_u64(cJSON *o, const char *key, uint64_t v)
{
	return cJSON_AddNumberToObject(o, key, (double)v) != NULL;
}

static bool add_sum(cJSON *o, const char *key, uint64_t xxh3)
{
	char sum[APB_CHECKSUM_STRLEN + 1];

	apb_checksum_format(xxh3, sum);
	return cJSON_AddStringToObject(o, key, sum) != NULL;
}

/* A model's keys: format 1 in its historical order; format 2 leaves out
 * every key that has a default (docs/FORMAT.md): its offset and stored
 * size are its blocks' extent in the table, its first table entry
 * follows the previous model's, its compression and chunk_size are the
 * top level's. */
static bool render_model(const struct job *j, const struct entry *e, cJSON *m)
{
	if (j->o->format == 1)
		return cJSON_AddStringToObject(m, "name", e->name) &&
		       add_u64(m, "offset", e->offset) &&
		       add_u64(m, "size", e->size) &&
		       add_sum(m, "checksum", e->xxh3);
	return cJSON_AddStringToObject(m, "name", e->name) &&
	       add_u64(m, "size", e->size) &&
	       add_sum(m, "checksum", e->xxh3);
}

/* Print the manifest for the current offsets and checksums. */
static int render_manifest(const struct job *j, char **out)
{
	cJSON *root = cJSON_CreateObject(), *models, *table;
	int rc = -ENOMEM;

	*out = NULL;
	if (!root || !add_u64(root, "model_count", j->n))
		goto out;
	if (j->o->format == 2) {
		table = cJSON_AddObjectToObject(root, "chunk_table");
		if (!table || !add_u64(table, "offset", j->table_off) ||
		    !add_u64(table, "count", j->entries) ||
		    !add_sum(table, "checksum", j->table_xxh3))
			goto out;
		if (j->o->compression == APB_WRITER_ZSTD &&
		    !cJSON_AddStringToObject(root, "compression", "zstd"))
			goto out;
		if (j->block_size != APB_V2_BLOCK_DEFAULT &&
		    !add_u64(root, "chunk_size", j->block_size))
			goto out;
	}
	models = cJSON_AddArrayToObject(root, "models");
	if (!models)
		goto out;
	for (size_t i = 0; i < j->n; i++) {
		cJSON *m = cJSON_CreateObject();

		if (!m)
			goto out;
		cJSON_AddItemToArray(models, m);
		if (!render_model(j, &j->e[i], m))
			goto out;
	}
	*out = cJSON_PrintUnformatted(root);
	rc = *out ? 0 : -ENOMEM;
out:
	cJSON_Delete(root);
	return rc;
}

/* Find the manifest length whose layout prints exactly that many bytes.
 * Format 2 lays out the stored-size bounds, so the offsets and T printed
 * here are the largest the real ones can be. */
static int layout(struct job *j)
{
	size_t len = 0;

	for (int round = 0; round < LAYOUT_ROUNDS_MAX; round++) {
		uint64_t off = align_up(APB_V1_HEADER_LEN + len), end = off;
		char *json;
		size_t printed;
		int rc;

		for (size_t i = 0; i < j->n; i++) {
			j->e[i].offset = off;
			end = off + j->e[i].stored;
			off = align_up(end);
		}
		j->table_off = table_align(end);
		if (j->table_off + j->entries * APB_V2_ENTRY_LEN >
		    (uint64_t)APB_JSON_EXACT_INT_MAX) {
			apb_fail(0, j->err, j->err_len,
				"%s: bundle too large (2^53 bytes)", j->out_path);
			return -EFBIG;
		}
		rc = render_manifest(j, &json);
		if (rc)
			return rc;
		printed = strlen(json);
		free(json);
		if (printed > APB_MANIFEST_MAX) {
			apb_fail(0, j->err, j->err_len,
				"%s: manifest of %zu bytes exceeds the limit",
				j->out_path, printed);
			return -EFBIG;
		}
		if (printed == len) {
			j->manifest_len = len;
			return 0;
		}
		len = printed;
	}
	return -EOVERFLOW; /* cannot happen: the sequence is monotonic */
}

/* Header, then json padded with spaces to the reserved length: exact in
 * format 1, at most that in format 2 (a longer one is a bug). */
static int write_head(struct job *j, const char *json)
{
	unsigned char h[APB_V1_HEADER_LEN];
	size_t n = strlen(json);
	int rc;

	if (n > j->manifest_len || (j->o->format == 1 && n != j->manifest_len))
		return -EPROTO;
	memcpy(h, APB_MAGIC, APB_MAGIC_LEN);
	put_le(h + 8, j->o->format, 4);
	put_le(h + 12, j->manifest_len, 4);
	if (lseek(j->af.fd, 0, SEEK_SET) < 0)
		return -errno;
	rc = write_all(j->af.fd, h, sizeof(h));
	if (rc == 0)
		rc = write_all(j->af.fd, json, n);
	while (rc == 0 && n < j->manifest_len) {
		static const char spaces[] = "                                ";
		size_t k = j->manifest_len - n < sizeof(spaces) - 1
				   ? j->manifest_len - n : sizeof(spaces) - 1;

		rc = write_all(j->af.fd, spaces, k);
		n += k;
	}
	return rc;
}

/* Failure of the output file: name the target the user asked for. */
static int out_err(struct job *j, int rc)
{
	apb_fail(0, j->err, j->err_len, "%s: %s", j->out_path, strerror(-rc));
	return rc;
}

static int cancel_err(char *err, size_t err_len, const char *path)
{
	apb_fail(0, err, err_len, "%s: interrupted", path);
	return -EINTR;
}

static void report(const struct apb_writer_options *o, uint64_t done,
		   uint64_t total)
{
	if (o && o->progress)
		o->progress(o->progress_arg, done, total);
}

/* Name the input and the reason; returns rc. */
static int in_err(struct job *j, const struct entry *e, int rc)
{
	apb_fail(0, j->err, j->err_len, "%s: %s", e->path,
		rc == -ERANGE ? "file changed size while being read"
			      : strerror(-rc));
	return rc == -ERANGE ? -EIO : rc;
}

/* Open input e and check it still has the size it was listed with. */
static int input_open(struct job *j, const struct entry *e, int *in)
{
	struct stat st;

	*in = open(e->path, O_RDONLY | O_CLOEXEC);
	if (*in < 0)
		return in_err(j, e, -errno);
	if (fstat(*in, &st) != 0)
		return in_err(j, e, -errno);
	if ((uint64_t)st.st_size != e->size)
		return in_err(j, e, -ERANGE);
	posix_fadvise(*in, 0, 0, POSIX_FADV_SEQUENTIAL);
	return 0;
}

/* After e->size bytes: nothing more to read and still that size, so a
 * file that grew, or shrank behind a read-ahead, fails the write. */
static int input_end(struct job *j, const struct entry *e, int in)
{
	struct stat st;
	char extra;
	ssize_t n;

	do
		n = read(in, &extra, 1);
	while (n < 0 && errno == EINTR);
	if (n != 0) /* grew, or cannot tell */
		return in_err(j, e, n < 0 ? -errno : -ERANGE);
	if (fstat(in, &st) != 0)
		return in_err(j, e, -errno);
	if ((uint64_t)st.st_size != e->size)
		return in_err(j, e, -ERANGE);
	return 0;
}

/* Read exactly len bytes: 0, -ERANGE at an early end, or the errno. */
static int read_full(int fd, unsigned char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = read(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -ERANGE;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Format 1: copy input e to the output at its offset, hashing as it goes.
 * Sets the error message for every failure. */
static int copy_model(struct job *j, struct entry *e, int in)
{
	uint64_t left = e->size;

	XXH3_64bits_reset(j->xxh);
	while (left > 0) {
		size_t want = left < COPY_BUF_BYTES ? (size_t)left
						    : COPY_BUF_BYTES;
		int rc;

		if (cancelled(j->o))
			return cancel_err(j->err, j->err_len, j->out_path);
		rc = read_full(in, j->buf, want);
		if (rc)
			return in_err(j, e, rc);
		XXH3_64bits_update(j->xxh, j->buf, want);
		rc = write_all(j->af.fd, j->buf, want);
		if (rc)
			return out_err(j, rc);
		left -= want;
		j->pos += want;
		j->done += want;
		report(j->o, j->done, j->total);
	}
	e->xxh3 = XXH3_64bits_digest(j->xxh);
	return 0;
}

/* ================================================================== */
/* Format 2: the block pool                                            */
/* ================================================================== */

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_DONE };

/* One block of a batch as a worker leaves it: what to store. */
struct piece {
	const unsigned char *p; /* into the slot's in (raw) or out (zstd) */
	size_t len;
	uint32_t flags;
	uint64_t xxh3;          /* of the uncompressed block */
};

/* A batch of consecutive blocks of one model. The main thread owns a slot
 * while it is FREE or DONE, the workers while it is QUEUED. */
struct slot {
	unsigned char *in;  /* the batch's input bytes */
	unsigned char *out; /* frames, back to back (zstd only) */
	size_t len;         /* input bytes */
	size_t count;       /* blocks */
	struct piece *pc;
	enum slot_state state;
	int rc;             /* 0, or -ENOMEM / -EIO from the worker */
};

struct pool {
	struct apb_mutex mu;
	pthread_cond_t work; /* a slot was queued, or stop */
	pthread_cond_t done; /* a slot became DONE */
	struct slot *slot;
	size_t nslots;
	size_t *ring;        /* queued slot numbers, in batch order */
	size_t head, tail;
	size_t block_size, batch_blocks;
	bool compress;
	int level;
	bool stop;
	pthread_t *tid;
	unsigned started;
};

/* Hash and, when asked, compress each block of s. A block is stored as
 * a frame only when the frame is shorter than the block: the capacity of
 * len - 1 makes zstd refuse anything else. */
static void batch_run(struct pool *pl, struct slot *s, ZSTD_CCtx **cctx)
{
	size_t used = 0;

	s->rc = 0;
	if (pl->compress && !*cctx) {
		*cctx = ZSTD_createCCtx();
		if (!*cctx) {
			s->rc = -ENOMEM;
			return;
		}
	}
	for (size_t c = 0; c < s->count; c++) {
		const unsigned char *src = s->in + c * pl->block_size;
		size_t len = s->len - c * pl->block_size, r;
		struct piece *pc = &s->pc[c];

		if (len > pl->block_size)
			len = pl->block_size;
		pc->p = src;
		pc->len = len;
		pc->flags = 0;
		pc->xxh3 = XXH3_64bits(src, len);
		if (!pl->compress)
			continue;
		r = ZSTD_compressCCtx(*cctx, s->out + used, len - 1, src, len,
				      pl->level);
		if (ZSTD_isError(r)) {
			if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
				continue; /* does not shrink: raw */
			s->rc = ZSTD_getErrorCode(r) ==
						ZSTD_error_memory_allocation
					? -ENOMEM : -EIO;
			return;
		}
		pc->p = s->out + used;
		pc->len = r;
		pc->flags = APB_BLOCK_ZSTD;
		used += r;
	}
}

static void *pool_worker(void *arg)
{
	struct pool *pl = arg;
	ZSTD_CCtx *cctx = NULL;

	apb_mutex_lock(&pl->mu);
	for (;;) {
		struct slot *s;

		while (!pl->stop && pl->head == pl->tail)
			apb_cond_wait(&pl->work, &pl->mu);
		if (pl->stop)
			break;
		s = &pl->slot[pl->ring[pl->head++ % pl->nslots]];
		apb_mutex_unlock(&pl->mu);
		batch_run(pl, s, &cctx);
		apb_mutex_lock(&pl->mu);
		s->state = SLOT_DONE;
		pthread_cond_broadcast(&pl->done);
	}
	apb_mutex_unlock(&pl->mu);
	ZSTD_freeCCtx(cctx);
	return NULL;
}

/* Stop the workers (abandoning queued batches) and free everything. */
static void pool_free(struct pool *pl)
{
	if (!pl)
		return;
	apb_mutex_lock(&pl->mu);
	pl->stop = true;
	pthread_cond_broadcast(&pl->work);
	apb_mutex_unlock(&pl->mu);
	for (unsigned i = 0; i < pl->started; i++)
		pthread_join(pl->tid[i], NULL);
	for (size_t i = 0; pl->slot && i < pl->nslots; i++) {
		free(pl->slot[i].in);
		free(pl->slot[i].out);
		free(pl->slot[i].pc);
	}
	free(pl->slot);
	free(pl->ring);
	free(pl->tid);
	pthread_cond_destroy(&pl->done);
	pthread_cond_destroy(&pl->work);
	apb_mutex_destroy(&pl->mu);
	free(pl);
}

/* Workers and a window of slots: batches of about BATCH_BYTES, between
 * threads + 1 slots (each worker busy while one is written) and
 * 2 * threads + 2, fewer than that when WINDOW_BYTES would be exceeded. */
static int pool_new(unsigned threads, size_t block_size, bool compress,
		    int level, struct pool **out)
{
	struct pool *pl = calloc(1, sizeof(*pl));
	size_t batch, per_slot;
	sigset_t all, old;
	int rc = -ENOMEM;

	*out = NULL;
	if (!pl)
		return -ENOMEM;
	apb_mutex_init(&pl->mu);
	pthread_cond_init(&pl->work, NULL);
	pthread_cond_init(&pl->done, NULL);
	pl->block_size = block_size;
	pl->batch_blocks = block_size < BATCH_BYTES ? BATCH_BYTES / block_size
						    : 1;
	pl->compress = compress;
	pl->level = level;
	batch = pl->batch_blocks * block_size;
	per_slot = compress ? 2 * batch : batch;
	pl->nslots = WINDOW_BYTES / per_slot;
	if (pl->nslots > 2 * (size_t)threads + 2)
		pl->nslots = 2 * (size_t)threads + 2;
	if (pl->nslots < (size_t)threads + 1)
		pl->nslots = (size_t)threads + 1;
	pl->slot = calloc(pl->nslots, sizeof(*pl->slot));
	pl->ring = calloc(pl->nslots, sizeof(*pl->ring));
	pl->tid = calloc(threads, sizeof(*pl->tid));
	if (!pl->slot || !pl->ring || !pl->tid)
		goto fail;
	for (size_t i = 0; i < pl->nslots; i++) {
		struct slot *s = &pl->slot[i];

		s->in = malloc(batch);
		s->out = compress ? malloc(batch) : NULL;
		s->pc = calloc(pl->batch_blocks, sizeof(*s->pc));
		if (!s->in || (compress && !s->out) || !s->pc)
			goto fail;
	}
	/* Workers block every signal, so a Ctrl-C interrupts the reading
	 * thread's read() and cancellation is seen at once. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (; pl->started < threads; pl->started++) {
		rc = -pthread_create(&pl->tid[pl->started], NULL, pool_worker,
				     pl);
		if (rc)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		goto fail;
	*out = pl;
	return 0;
fail:
	pool_free(pl);
	return rc;
}

static void pool_submit(struct pool *pl, size_t slot)
{
	apb_mutex_lock(&pl->mu);
	pl->slot[slot].state = SLOT_QUEUED;
	pl->ring[pl->tail++ % pl->nslots] = slot;
	pthread_cond_signal(&pl->work);
	apb_mutex_unlock(&pl->mu);
}

static struct slot *pool_wait(struct pool *pl, size_t slot)
{
	struct slot *s = &pl->slot[slot];

	apb_mutex_lock(&pl->mu);
	while (s->state != SLOT_DONE)
		apb_cond_wait(&pl->done, &pl->mu);
	apb_mutex_unlock(&pl->mu);
	return s;
}

static unsigned worker_count(const struct apb_writer_options *o)
{
	long n = o->threads ? (long)o->threads : sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
}

/* ================================================================== */
/* Format 2: writing models and the block table                        */
/* ================================================================== */

/* Store the blocks of a finished batch from j->pos on, block table entries
 * from number first on. A raw block goes to the next multiple of 4096 (a
 * no-op in a "none" model, whose blocks are all raw and whole). Runs of
 * pieces adjacent in memory and in the file are one write. */
static int write_batch(struct job *j, const struct slot *s, uint64_t first)
{
	const unsigned char *run = NULL;
	size_t run_len = 0;
	int rc = 0;

	for (size_t c = 0; c < s->count && rc == 0; c++) {
		const struct piece *pc = &s->pc[c];
		unsigned char *t = j->table + (first + c) * APB_V2_ENTRY_LEN;
		uint64_t at = pc->flags ? j->pos : align_up(j->pos);

		if (run_len && (at != j->pos || pc->p != run + run_len)) {
			rc = write_all(j->af.fd, run, run_len);
			run_len = 0;
		}
		if (rc == 0 && at != j->pos)
			rc = write_zeros(j->af.fd, at - j->pos);
		if (!run_len)
			run = pc->p;
		run_len += pc->len;
		put_le(t, at, 8);
		put_le(t + 8, pc->len, 4);
		put_le(t + 12, pc->flags, 4);
		put_le(t + 16, pc->xxh3, 8);
		j->pos = at + pc->len;
	}
	if (rc == 0 && run_len)
		rc = write_all(j->af.fd, run, run_len);
	return rc ? out_err(j, rc) : 0;
}

/* Format 2: read input e batch by batch into the pool's window, keeping
 * every slot busy, and store finished batches in order. */
static int pack_model(struct job *j, struct entry *e, int in)
{
	struct pool *pl = j->pool;
	uint64_t batch = pl->batch_blocks * pl->block_size;
	uint64_t nb = (e->size + batch - 1) / batch, r = 0, w = 0;

	XXH3_64bits_reset(j->xxh);
	while (w < nb) {
		struct slot *s;
		int rc;

		for (; r < nb && r - w < pl->nslots; r++) {
			s = &pl->slot[r % pl->nslots];
			if (cancelled(j->o))
				return cancel_err(j->err, j->err_len,
						  j->out_path);
			s->len = (size_t)(e->size - r * batch < batch
						  ? e->size - r * batch : batch);
			rc = read_full(in, s->in, s->len);
			if (rc)
				return in_err(j, e, rc);
			XXH3_64bits_update(j->xxh, s->in, s->len);
			s->count = (s->len + pl->block_size - 1) / pl->block_size;
			pool_submit(pl, r % pl->nslots);
		}
		s = pool_wait(pl, w % pl->nslots);
		s->state = SLOT_FREE;
		if (s->rc)
			return out_err(j, s->rc);
		rc = write_batch(j, s, e->first_block + w * pl->batch_blocks);
		if (rc)
			return rc;
		j->done += s->len;
		report(j->o, j->done, j->total);
		w++;
	}
	e->xxh3 = XXH3_64bits_digest(j->xxh);
	return 0;
}

/* Every model, each from the next multiple of 4096 with zeros before. */
static int write_models(struct job *j)
{
	j->pos = APB_V1_HEADER_LEN + j->manifest_len;
	for (size_t i = 0; i < j->n; i++) {
		struct entry *e = &j->e[i];
		int in = -1, rc;

		e->offset = align_up(j->pos);
		rc = write_zeros(j->af.fd, e->offset - j->pos);
		if (rc)
			return out_err(j, rc);
		j->pos = e->offset;
		rc = input_open(j, e, &in);
		if (rc == 0)
			rc = j->o->format == 1 ? copy_model(j, e, in)
					       : pack_model(j, e, in);
		if (rc == 0)
			rc = input_end(j, e, in);
		if (in >= 0)
			close(in);
		if (rc)
			return rc;
		e->stored = j->pos - e->offset;
	}
	return 0;
}

/* Format 2: the table at the next multiple of 8, ending the file. */
static int write_table(struct job *j)
{
	size_t len = (size_t)j->entries * APB_V2_ENTRY_LEN;
	int rc;

	j->table_off = table_align(j->pos);
	j->table_xxh3 = XXH3_64bits(j->table, len);
	rc = write_zeros(j->af.fd, j->table_off - j->pos);
	if (rc == 0)
		rc = write_all(j->af.fd, j->table, len);
	if (rc)
		return out_err(j, rc);
	j->pos = j->table_off + len;
	return 0;
}

static int write_bundle(struct job *j)
{
	char *json = NULL;
	int rc;

	rc = render_manifest(j, &json); /* placeholder checksums */
	if (rc == 0)
		rc = write_head(j, json);
	free(json);
	json = NULL;
	if (rc)
		return out_err(j, rc);
	rc = write_models(j);
	if (rc == 0 && j->o->format == 2)
		rc = write_table(j);
	if (rc)
		return rc;
	rc = render_manifest(j, &json); /* real values, no longer */
	if (rc == 0)
		rc = write_head(j, json);
	free(json);
	if (rc)
		return out_err(j, rc);
	if (cancelled(j->o))
		return cancel_err(j->err, j->err_len, j->out_path);
	return 0;
}

/* Format 2: block counts, table entries and the stored-size bounds. */
static int count_blocks(struct job *j)
{
	bool zstd = j->o->compression == APB_WRITER_ZSTD;

	j->block_size = j->o->block_size ? j->o->block_size : APB_V2_BLOCK_DEFAULT;
	for (size_t i = 0; i < j->n; i++) {
		struct entry *e = &j->e[i];
		uint64_t blocks = (e->size + j->block_size - 1) / j->block_size;

		e->first_block = j->entries;
		j->entries += blocks;
		if (zstd) /* each block raw behind up to 4095 bytes of padding */
			e->stored += blocks * (APB_ALIGN - 1);
	}
	if (j->entries > (uint64_t)APB_BLOCKS_MAX) {
		apb_fail(0, j->err, j->err_len,
			"%s: %llu blocks (at most %llu); a larger block size "
			"makes fewer", j->out_path,
			(unsigned long long)j->entries,
			(unsigned long long)APB_BLOCKS_MAX);
		return -EFBIG;
	}
	return 0;
}

/* Collect entries, check names and inputs; nothing is created yet. */
static int prepare(struct job *j, const struct apb_input_list *inputs)
{
	struct stat st;
	int rc;

	rc = apb_writer_options_check(j->o, j->err, j->err_len);
	if (rc)
		return rc;
	j->n = apb_input_list_count(inputs);
	if (j->n > APB_MODELS_MAX) {
		apb_fail(0, j->err, j->err_len, "%s: %zu models (at most %u)",
			j->out_path, j->n, APB_MODELS_MAX);
		return -EFBIG;
	}
	j->e = calloc(j->n ? j->n : 1, sizeof(*j->e));
	if (!j->e)
		return out_err(j, -ENOMEM);
	for (size_t i = 0; i < j->n; i++) {
		j->e[i].name = apb_input_list_name(inputs, i);
		j->e[i].path = apb_input_list_path(inputs, i);
	}
	/* Refuse a link, FIFO or device at OUT before any work; atomic.c
	 * checks again before the rename. */
	rc = apb_atomic_check_target(j->out_path, &st, j->err, j->err_len);
	if (rc)
		return rc;
	if (st.st_mode) { /* an input must not be the file replaced */
		j->out_dev = st.st_dev;
		j->out_ino = st.st_ino;
	}
	rc = check_names(j);
	if (rc == 0)
		rc = stat_inputs(j);
	if (rc == 0 && j->o->format == 2)
		rc = count_blocks(j);
	if (rc == 0)
		rc = layout(j);
	return rc;
}

/* Buffers and, for format 2, the table and the workers. */
static int start(struct job *j)
{
	const struct apb_writer_options *o = j->o;
	int rc = 0;

	j->xxh = XXH3_createState();
	if (o->format == 1)
		j->buf = malloc(COPY_BUF_BYTES);
	else
		j->table = malloc(j->entries ? j->entries * APB_V2_ENTRY_LEN : 1);
	if (!j->xxh || (!j->buf && !j->table))
		return out_err(j, -ENOMEM);
	if (o->format == 2)
		rc = pool_new(worker_count(o), j->block_size,
			      o->compression == APB_WRITER_ZSTD,
			      o->compression_level ? o->compression_level
						   : ZSTD_CLEVEL_DEFAULT,
			      &j->pool);
	return rc ? out_err(j, rc) : 0;
}

int apb_writer_create_bundle(const char *out_path,
			     const struct apb_input_list *inputs,
			     const struct apb_writer_options *o, char *err,
			     size_t err_len)
{
	struct apb_writer_options defaults;
	struct job j = {.out_path = out_path, .o = o, .err = err,
			.err_len = err_len, .af = {.fd = -1}};
	int rc;

	if (!o) {
		apb_writer_options_init(&defaults);
		j.o = &defaults;
	}
	apb_fail(0, err, err_len, "%s: failed", out_path);
	rc = prepare(&j, inputs);
	if (rc)
		goto out;
	if (cancelled(j.o)) {
		rc = cancel_err(err, err_len, out_path);
		goto out;
	}
	rc = start(&j);
	if (rc)
		goto out;
	rc = apb_atomic_open(&j.af, out_path, err, err_len);
	if (rc)
		goto out;
	report(j.o, 0, j.total);
	rc = write_bundle(&j);
	if (rc == 0)
		rc = apb_atomic_commit(&j.af, err, err_len);
out:
	apb_atomic_abort(&j.af);
	pool_free(j.pool);
	XXH3_freeState(j.xxh);
	free(j.table);
	free(j.buf);
	free(j.e);
	return rc;
}

/* ================================================================== */
/* Extracting a model                                                  */
/* ================================================================== */

/* The buffer for reading model m: about COPY_BUF_BYTES of whole blocks,
 * so no block is verified (and decompressed) twice. */
static size_t read_piece(const struct apb_model *m)
{
	if (m->block_size == 0)
		return COPY_BUF_BYTES;
	if (m->block_size >= COPY_BUF_BYTES)
		return (size_t)m->block_size;
	return COPY_BUF_BYTES / (size_t)m->block_size * (size_t)m->block_size;
}

/* Read model index through apb_bundle_preadv() (each version 2 block
 * against its XXH3), copying it to out_fd (named out_label in messages)
 * when out_fd >= 0, then check the model's checksum against what was
 * read. */
static int model_check(const struct apb_bundle *b, const char *label,
		       size_t index, int out_fd, const char *out_label,
		       const struct apb_writer_options *o, char *err,
		       size_t err_len)
{
	const struct apb_model *m = apb_bundle_model(b, index);
	const char *target = out_fd >= 0 ? out_label : label;
	size_t piece = read_piece(m);
	unsigned char *buf = malloc(piece);
	XXH3_state_t *st = XXH3_createState();
	uint64_t done = 0, got;
	int rc = 0;

	if (!buf || !st) {
		rc = -ENOMEM;
		apb_fail(0, err, err_len, "%s: %s", target, strerror(-rc));
		goto out;
	}
	XXH3_64bits_reset(st);
	while (done < m->size) {
		uint64_t left = m->size - done, bad = 0;
		struct iovec iov = {buf, left < piece ? (size_t)left : piece};
		long n;

		if (cancelled(o)) {
			rc = cancel_err(err, err_len, target);
			goto out;
		}
		n = apb_bundle_preadv(b, index, done, &iov, 1, &bad);
		if (n == -EBADMSG) {
			rc = -EBADMSG;
			apb_fail(0, err, err_len,
				"%s: model '%s' block %llu: checksum mismatch",
				label, m->name, (unsigned long long)bad);
			goto out;
		}
		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			apb_fail(0, err, err_len, "%s: model '%s': %s", label,
				m->name, strerror(-rc));
			goto out;
		}
		XXH3_64bits_update(st, buf, (size_t)n);
		rc = out_fd >= 0 ? write_all(out_fd, buf, (size_t)n) : 0;
		if (rc) {
			apb_fail(0, err, err_len, "%s: %s", target,
				strerror(-rc));
			goto out;
		}
		done += (uint64_t)n;
		report(o, done, m->size);
	}
	got = XXH3_64bits_digest(st);
	if (cancelled(o)) {
		rc = cancel_err(err, err_len, target);
	} else if (m->has_checksum && got != m->xxh3) {
		char have[APB_CHECKSUM_STRLEN + 1], want[APB_CHECKSUM_STRLEN + 1];

		apb_checksum_format(got, have);
		apb_checksum_format(m->xxh3, want);
		apb_fail(0, err, err_len, "%s: model '%s': checksum %s expected %s",
			label, m->name, have, want);
		rc = -EBADMSG;
	}
out:
	XXH3_freeState(st);
	free(buf);
	return rc;
}

static int no_model(const char *label, size_t index, char *err,
		    size_t err_len)
{
	apb_fail(0, err, err_len, "%s: model %zu: no such model", label, index);
	return -ENOENT;
}

int apb_writer_extract_model(const struct apb_bundle *b, const char *label,
			     size_t index, const char *out_path,
			     const struct apb_writer_options *o, char *err,
			     size_t err_len)
{
	struct apb_atomic_file af = {.fd = -1};
	int rc;

	if (!apb_bundle_model(b, index))
		return no_model(label, index, err, err_len);
	rc = apb_atomic_open(&af, out_path, err, err_len);
	if (rc)
		return rc;
	rc = model_check(b, label, index, af.fd, out_path, o, err, err_len);
	if (rc == 0)
		rc = apb_atomic_commit(&af, err, err_len);
	apb_atomic_abort(&af);
	return rc;
}

int apb_writer_extract_model_fd(const struct apb_bundle *b, const char *label,
				size_t index, int fd, const char *out_label,
				const struct apb_writer_options *o, char *err,
				size_t err_len)
{
	if (!apb_bundle_model(b, index))
		return no_model(label, index, err, err_len);
	return model_check(b, label, index, fd, out_label, o, err, err_len);
}

int apb_writer_check_model(const struct apb_bundle *b, const char *label,
			   size_t index, const struct apb_writer_options *o,
			   char *err, size_t err_len)
{
	if (!apb_bundle_model(b, index))
		return no_model(label, index, err, err_len);
	return model_check(b, label, index, -1, NULL, o, err, err_len);
}
