/*
 * writer.c - write .apbundle files (format 1) and extract models, atomically.
 *
 * Layout of a version-1 bundle (SPEC §2):
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
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"

#include "atomic.h"
#include "error.h"

#define COPY_BUF_BYTES (1u << 20)
#define HEADER_BYTES 16u
#define JSON_EXACT_MAX (UINT64_C(1) << 53)
#define LAYOUT_ROUNDS_MAX 64

static const unsigned char zeros[APB_ALIGN];

static bool cancelled(const struct apb_writer_options *o)
{
	return o && o->cancel && *o->cancel;
}

static uint64_t align_up(uint64_t v)
{
	return (v + APB_ALIGN - 1) / APB_ALIGN * APB_ALIGN;
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
	if (o->chunk_size % APB_ALIGN != 0 || o->chunk_size > UINT32_MAX) {
		apb_fail(0, err, err_len,
			"chunk size %llu is not a multiple of 4096 up to 4 GiB",
			(unsigned long long)o->chunk_size);
		return -EINVAL;
	}
	if (o->format == 1 &&
	    (o->compression != APB_WRITER_STORE || o->chunk_size != 0)) {
		apb_fail(0, err, err_len,
			"compression and chunk size need format 2");
		return -EINVAL;
	}
	if (o->format == 2) {
		apb_fail(0, err, err_len, "format 2 is not supported yet");
		return -ENOTSUP;
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
	uint64_t xxh3;    /* 0 (placeholder) until copied */
};

struct job {
	const char *out_path;
	const struct apb_writer_options *o;
	struct entry *e;
	size_t n;
	uint64_t total, done;   /* model bytes, for progress */
	size_t manifest_len;    /* L, fixed by layout() */
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
		if (e->size >= JSON_EXACT_MAX - j->total) {
			apb_fail(0, j->err, j->err_len,
				"%s: inputs too large for a bundle (2^53 bytes)",
				e->path);
			return -EFBIG;
		}
		j->total += e->size;
	}
	return 0;
}

/* Print the manifest for the current offsets and checksums. */
static int render_manifest(const struct job *j, char **out)
{
	cJSON *root = cJSON_CreateObject(), *models;
	char sum[APB_CHECKSUM_STRLEN + 1];
	int rc = -ENOMEM;

	*out = NULL;
	if (!root || !cJSON_AddNumberToObject(root, "model_count", (double)j->n))
		goto out;
	models = cJSON_AddArrayToObject(root, "models");
	if (!models)
		goto out;
	for (size_t i = 0; i < j->n; i++) {
		const struct entry *e = &j->e[i];
		cJSON *m = cJSON_CreateObject();

		if (!m)
			goto out;
		cJSON_AddItemToArray(models, m);
		apb_checksum_format(e->xxh3, sum);
		if (!cJSON_AddStringToObject(m, "name", e->name) ||
		    !cJSON_AddNumberToObject(m, "offset", (double)e->offset) ||
		    !cJSON_AddNumberToObject(m, "size", (double)e->size) ||
		    !cJSON_AddStringToObject(m, "checksum", sum))
			goto out;
	}
	*out = cJSON_PrintUnformatted(root);
	rc = *out ? 0 : -ENOMEM;
out:
	cJSON_Delete(root);
	return rc;
}

/* Find the manifest length L whose layout prints exactly L bytes. */
static int layout(struct job *j)
{
	size_t len = 0;

	for (int round = 0; round < LAYOUT_ROUNDS_MAX; round++) {
		uint64_t off = align_up(HEADER_BYTES + len);
		char *json;
		size_t printed;
		int rc;

		for (size_t i = 0; i < j->n; i++) {
			j->e[i].offset = off;
			off = align_up(off + j->e[i].size);
		}
		if (j->n && j->e[j->n - 1].offset + j->e[j->n - 1].size >=
				    JSON_EXACT_MAX) {
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

/* Header and placeholder manifest; the real manifest replaces it later. */
static int write_head(struct job *j, const char *json)
{
	unsigned char h[HEADER_BYTES];
	uint32_t version = 1, len = (uint32_t)j->manifest_len;
	int rc;

	memcpy(h, APB_MAGIC, APB_MAGIC_LEN);
	for (int i = 0; i < 4; i++) {
		h[8 + i] = (unsigned char)(version >> (8 * i));
		h[12 + i] = (unsigned char)(len >> (8 * i));
	}
	rc = write_all(j->af.fd, h, sizeof(h));
	if (rc == 0)
		rc = write_all(j->af.fd, json, j->manifest_len);
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

/* Copy input e to the output at its offset, hashing as it goes. Sets the
 * error message for every failure. */
static int copy_model(struct job *j, struct entry *e, int in)
{
	uint64_t left = e->size;
	struct stat st;
	char extra;
	ssize_t n;

	if (fstat(in, &st) != 0)
		return in_err(j, e, -errno);
	if ((uint64_t)st.st_size != e->size)
		return in_err(j, e, -ERANGE);
	posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
	XXH3_64bits_reset(j->xxh);
	while (left > 0) {
		size_t want = left < COPY_BUF_BYTES ? (size_t)left
						    : COPY_BUF_BYTES;
		int rc;

		if (cancelled(j->o))
			return cancel_err(j->err, j->err_len, j->out_path);
		n = read(in, j->buf, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return in_err(j, e, n < 0 ? -errno : -ERANGE);
		XXH3_64bits_update(j->xxh, j->buf, (size_t)n);
		rc = write_all(j->af.fd, j->buf, (size_t)n);
		if (rc)
			return out_err(j, rc);
		left -= (uint64_t)n;
		j->done += (uint64_t)n;
		report(j->o, j->done, j->total);
	}
	do
		n = read(in, &extra, 1);
	while (n < 0 && errno == EINTR);
	if (n != 0) /* grew, or cannot tell */
		return in_err(j, e, n < 0 ? -errno : -ERANGE);
	e->xxh3 = XXH3_64bits_digest(j->xxh);
	return 0;
}

/* Every model, with zero padding up to each aligned offset. */
static int write_models(struct job *j)
{
	uint64_t pos = HEADER_BYTES + j->manifest_len;

	for (size_t i = 0; i < j->n; i++) {
		struct entry *e = &j->e[i];
		int in, rc;

		rc = write_zeros(j->af.fd, e->offset - pos);
		if (rc)
			return out_err(j, rc);
		in = open(e->path, O_RDONLY | O_CLOEXEC);
		if (in < 0)
			return in_err(j, e, -errno);
		rc = copy_model(j, e, in);
		close(in);
		if (rc)
			return rc;
		pos = e->offset + e->size;
	}
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
	if (rc)
		return rc;
	rc = render_manifest(j, &json); /* real checksums, same length */
	if (rc)
		return out_err(j, rc);
	if (strlen(json) != j->manifest_len) {
		free(json);
		return out_err(j, -EPROTO);
	}
	if (lseek(j->af.fd, HEADER_BYTES, SEEK_SET) < 0)
		rc = -errno;
	else
		rc = write_all(j->af.fd, json, j->manifest_len);
	free(json);
	if (rc)
		return out_err(j, rc);
	if (cancelled(j->o))
		return cancel_err(j->err, j->err_len, j->out_path);
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
	if (stat(j->out_path, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return out_err(j, -EISDIR);
		j->out_dev = st.st_dev;
		j->out_ino = st.st_ino;
	}
	rc = check_names(j);
	if (rc == 0)
		rc = stat_inputs(j);
	if (rc == 0)
		rc = layout(j);
	return rc;
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
	j.buf = malloc(COPY_BUF_BYTES);
	j.xxh = XXH3_createState();
	if (!j.buf || !j.xxh) {
		rc = out_err(&j, -ENOMEM);
		goto out;
	}
	rc = apb_atomic_open(&j.af, out_path, err, err_len);
	if (rc)
		goto out;
	report(j.o, 0, j.total);
	rc = write_bundle(&j);
	if (rc == 0)
		rc = apb_atomic_commit(&j.af, err, err_len);
out:
	apb_atomic_abort(&j.af);
	XXH3_freeState(j.xxh);
	free(j.buf);
	free(j.e);
	return rc;
}

/* ================================================================== */
/* Extracting a model                                                  */
/* ================================================================== */

/* Copy and hash the model into af; *xxh3 is the digest of what was read. */
static int extract_copy(const struct apb_bundle *b, const char *label,
			size_t index, const struct apb_model *m,
			struct apb_atomic_file *af,
			const struct apb_writer_options *o, uint64_t *xxh3,
			char *err, size_t err_len)
{
	unsigned char *buf = malloc(COPY_BUF_BYTES);
	XXH3_state_t *st = XXH3_createState();
	uint64_t done = 0;
	int rc = 0;

	if (!buf || !st) {
		rc = -ENOMEM;
		apb_fail(0, err, err_len, "%s: %s", af->target, strerror(-rc));
		goto out;
	}
	XXH3_64bits_reset(st);
	while (done < m->size) {
		uint64_t left = m->size - done;
		size_t want = left < COPY_BUF_BYTES ? (size_t)left
						    : COPY_BUF_BYTES;
		long n;

		if (cancelled(o)) {
			rc = cancel_err(err, err_len, af->target);
			goto out;
		}
		n = apb_bundle_read(b, index, done, buf, want);
		if (n <= 0) {
			rc = n < 0 ? (int)n : -EIO;
			apb_fail(0, err, err_len, "%s: model '%s': %s", label,
				m->name, strerror(-rc));
			goto out;
		}
		XXH3_64bits_update(st, buf, (size_t)n);
		rc = write_all(af->fd, buf, (size_t)n);
		if (rc) {
			apb_fail(0, err, err_len, "%s: %s", af->target,
				strerror(-rc));
			goto out;
		}
		done += (uint64_t)n;
		report(o, done, m->size);
	}
	*xxh3 = XXH3_64bits_digest(st);
out:
	XXH3_freeState(st);
	free(buf);
	return rc;
}

int apb_writer_extract_model(const struct apb_bundle *b, const char *label,
			     size_t index, const char *out_path,
			     const struct apb_writer_options *o, char *err,
			     size_t err_len)
{
	const struct apb_model *m = apb_bundle_model(b, index);
	struct apb_atomic_file af = {.fd = -1};
	uint64_t got = 0;
	int rc;

	if (!m) {
		apb_fail(0, err, err_len, "%s: model %zu: no such model", label,
			index);
		return -ENOENT;
	}
	rc = apb_atomic_open(&af, out_path, err, err_len);
	if (rc)
		return rc;
	rc = extract_copy(b, label, index, m, &af, o, &got, err, err_len);
	if (rc == 0 && cancelled(o))
		rc = cancel_err(err, err_len, out_path);
	if (rc == 0 && m->has_checksum && got != m->xxh3) {
		char have[APB_CHECKSUM_STRLEN + 1], want[APB_CHECKSUM_STRLEN + 1];

		apb_checksum_format(got, have);
		apb_checksum_format(m->xxh3, want);
		apb_fail(0, err, err_len, "%s: model '%s': checksum %s expected %s",
			label, m->name, have, want);
		rc = -EBADMSG;
	}
	if (rc == 0)
		rc = apb_atomic_commit(&af, err, err_len);
	apb_atomic_abort(&af);
	return rc;
}
