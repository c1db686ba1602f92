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
 *  - Output goes to "OUT.tmp.XXXXXX" in OUT's directory (O_EXCL, mode 0666
 *    less the umask, like any created file), is fsynced, renamed over OUT,
 *    and the directory is fsynced. Every failure before the rename unlinks
 *    the temporary file. Cancellation is polled once per buffer. Only a
 *    process that is killed outright (SIGKILL, power loss) can leave an
 *    "OUT.tmp.XXXXXX" behind; OUT itself is never partial.
 *  - Offsets and sizes stay below 2^53 so the JSON numbers (doubles in
 *    cJSON and most JSON tools) are exact.
 *
 * The file has three parts: input lists (the INPUT forms of `apbundle
 * create`, directory walks), atomic output files, and the two writers.
 */
#include "apbundle/writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"

#define COPY_BUF_BYTES (1u << 20)
#define HEADER_BYTES 16u
#define JSON_EXACT_MAX (UINT64_C(1) << 53)
#define LAYOUT_ROUNDS_MAX 64

static const unsigned char zeros[APB_ALIGN];

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (!err || err_len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

static bool cancelled(const struct apb_writer_options *o)
{
	return o && o->cancel && *o->cancel;
}

static uint64_t align_up(uint64_t v)
{
	return (v + APB_ALIGN - 1) / APB_ALIGN * APB_ALIGN;
}

/* ================================================================== */
/* Input lists                                                         */
/* ================================================================== */

struct input {
	char *name;
	char *path;
};

struct apb_input_list {
	struct input *v;
	size_t n, cap;
};

int apb_input_list_new(struct apb_input_list **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

void apb_input_list_free(struct apb_input_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].name);
		free(l->v[i].path);
	}
	free(l->v);
	free(l);
}

size_t apb_input_list_count(const struct apb_input_list *l)
{
	return l->n;
}

const char *apb_input_list_name(const struct apb_input_list *l, size_t i)
{
	return i < l->n ? l->v[i].name : NULL;
}

const char *apb_input_list_path(const struct apb_input_list *l, size_t i)
{
	return i < l->n ? l->v[i].path : NULL;
}

int apb_input_list_add(struct apb_input_list *l, const char *name,
		       const char *path)
{
	struct input in = {strdup(name), strdup(path)};

	if (!in.name || !in.path)
		goto nomem;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct input *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			goto nomem;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = in;
	return 0;
nomem:
	free(in.name);
	free(in.path);
	return -ENOMEM;
}

/* "a/b" + "c" -> "a/b/c"; a trailing '/' on dir is not doubled. Empty dir
 * means no prefix at all. Returns a malloc'd string or NULL. */
static char *join(const char *dir, const char *leaf)
{
	size_t dl = strlen(dir);
	bool slash = dl > 0 && dir[dl - 1] != '/';
	size_t n = dl + slash + strlen(leaf) + 1;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "%s%s%s", dir, slash ? "/" : "", leaf);
	return s;
}

/* Last component of a path, ignoring trailing slashes, copied. */
static char *last_component(const char *path)
{
	size_t end = strlen(path), start;

	while (end > 1 && path[end - 1] == '/')
		end--;
	start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	return strndup(path + start, end - start);
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of dir's entries, without "." and "..". */
static int read_dir_sorted(const char *dir, char ***names_out, size_t *n_out,
			   char *err, size_t err_len)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int rc = 0;

	if (!d) {
		rc = -errno;
		set_err(err, err_len, "%s: %s", dir, strerror(-rc));
		return rc;
	}
	for (errno = 0; (de = readdir(d)); errno = 0) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			char **v = realloc(names, (cap = cap ? cap * 2 : 32) *
							 sizeof(*v));
			if (!v)
				goto nomem;
			names = v;
		}
		if (!(names[n] = strdup(de->d_name)))
			goto nomem;
		n++;
	}
	if (errno) {
		rc = -errno;
		set_err(err, err_len, "%s: %s", dir, strerror(-rc));
		goto out;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_cstr);
	goto out;
nomem:
	rc = -ENOMEM;
	set_err(err, err_len, "%s: %s", dir, strerror(ENOMEM));
out:
	closedir(d);
	if (rc) {
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		names = NULL;
		n = 0;
	}
	*names_out = names;
	*n_out = n;
	return rc;
}

static int walk_dir(struct apb_input_list *l, const char *dir,
		    const char *prefix, char *err, size_t err_len);

/* One entry of a directory walk: a file to add, a directory to descend,
 * or something to skip (see apb_input_list_add_arg). */
static int walk_entry(struct apb_input_list *l, const char *path,
		      const char *name, char *err, size_t err_len)
{
	struct stat st;
	int rc;

	if (lstat(path, &st) != 0)
		goto fail;
	if (S_ISDIR(st.st_mode))
		return walk_dir(l, path, name, err, err_len);
	if (S_ISLNK(st.st_mode)) {
		if (stat(path, &st) != 0)
			goto fail;
		if (!S_ISREG(st.st_mode))
			return 0; /* never descend a linked directory */
	}
	if (!S_ISREG(st.st_mode))
		return 0;
	rc = apb_input_list_add(l, name, path);
	if (rc)
		set_err(err, err_len, "%s: %s", path, strerror(-rc));
	return rc;
fail:
	rc = -errno;
	set_err(err, err_len, "%s: %s", path, strerror(-rc));
	return rc;
}

static int walk_dir(struct apb_input_list *l, const char *dir,
		    const char *prefix, char *err, size_t err_len)
{
	char **names = NULL;
	size_t n = 0, i;
	int rc = read_dir_sorted(dir, &names, &n, err, err_len);

	for (i = 0; rc == 0 && i < n; i++) {
		char *path = join(dir, names[i]);
		char *name = join(prefix, names[i]);

		if (!path || !name) {
			rc = -ENOMEM;
			set_err(err, err_len, "%s: %s", dir, strerror(ENOMEM));
		} else {
			rc = walk_entry(l, path, name, err, err_len);
		}
		free(path);
		free(name);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

int apb_input_list_add_arg(struct apb_input_list *l, const char *arg,
			   char *err, size_t err_len)
{
	const char *eq = strchr(arg, '=');
	const char *path = eq ? eq + 1 : arg;
	char *name = eq ? strndup(arg, (size_t)(eq - arg)) : last_component(arg);
	struct stat st;
	int rc = 0;

	if (!name) {
		rc = -ENOMEM;
		set_err(err, err_len, "%s: %s", arg, strerror(ENOMEM));
		goto out;
	}
	if (eq && (name[0] == '\0' || path[0] == '\0')) {
		rc = -EINVAL;
		set_err(err, err_len, "%s: expected NAME=FILE", arg);
		goto out;
	}
	if (stat(path, &st) != 0) {
		rc = -errno;
		set_err(err, err_len, "%s: %s", path, strerror(-rc));
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		rc = walk_dir(l, path, eq ? name : "", err, err_len);
	} else if (S_ISREG(st.st_mode)) {
		rc = apb_input_list_add(l, name, path);
		if (rc)
			set_err(err, err_len, "%s: %s", path, strerror(-rc));
	} else {
		rc = -EINVAL;
		set_err(err, err_len, "%s: not a regular file or directory",
			path);
	}
out:
	free(name);
	return rc;
}

/* ================================================================== */
/* Atomic output files                                                 */
/* ================================================================== */

struct atomic_file {
	const char *target; /* the caller's path, used in messages */
	char *tmp;          /* "target.tmp.XXXXXX", NULL once renamed */
	int fd;
};

/* Six characters in [0-9A-Za-z] for a temporary name, like mkstemp. */
static void random_suffix(char out[7])
{
	static const char set[] =
		"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	unsigned char r[6];

	if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
		/* O_EXCL keeps this safe; randomness only avoids retries. */
		uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15u ^
			     (uint64_t)time(NULL) ^ (uint64_t)clock();
		for (int i = 0; i < 6; i++, x >>= 8)
			r[i] = (unsigned char)x;
	}
	for (int i = 0; i < 6; i++)
		out[i] = set[r[i] % (sizeof(set) - 1)];
	out[6] = '\0';
}

/* Create the temporary file. Mode 0666 goes through the umask, so the
 * result has the permissions any newly created file would have. */
static int af_open(struct atomic_file *af, const char *target, char *err,
		   size_t err_len)
{
	size_t n = strlen(target) + sizeof(".tmp.XXXXXX");
	int rc = -EEXIST;

	af->target = target;
	af->fd = -1;
	af->tmp = malloc(n);
	if (!af->tmp) {
		set_err(err, err_len, "%s: %s", target, strerror(ENOMEM));
		return -ENOMEM;
	}
	for (int tries = 0; tries < 100 && rc == -EEXIST; tries++) {
		char sfx[7];

		random_suffix(sfx);
		snprintf(af->tmp, n, "%s.tmp.%s", target, sfx);
		af->fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			      0666);
		rc = af->fd >= 0 ? 0 : -errno;
	}
	if (rc) {
		set_err(err, err_len, "%s: %s", target, strerror(-rc));
		free(af->tmp);
		af->tmp = NULL;
	}
	return rc;
}

/* Remove the temporary file; safe to call after a commit (no-op). */
static void af_abort(struct atomic_file *af)
{
	if (af->fd >= 0)
		close(af->fd);
	af->fd = -1;
	if (af->tmp)
		unlink(af->tmp);
	free(af->tmp);
	af->tmp = NULL;
}

static int fsync_parent_dir(const char *path)
{
	char *copy = strdup(path), *slash;
	int fd, rc = 0;

	if (!copy)
		return -ENOMEM;
	slash = strrchr(copy, '/');
	if (!slash)
		strcpy(copy, ".");
	else if (slash == copy)
		slash[1] = '\0';
	else
		*slash = '\0';
	fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

/* fsync, close, rename over the target, fsync the directory. */
static int af_commit(struct atomic_file *af, char *err, size_t err_len)
{
	int rc = 0, fd = af->fd;

	af->fd = -1;
	if (fsync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(af->tmp, af->target) != 0)
		rc = -errno;
	if (rc) {
		set_err(err, err_len, "%s: %s", af->target, strerror(-rc));
		af_abort(af);
		return rc;
	}
	free(af->tmp);
	af->tmp = NULL;
	/* The file is complete and in place; a failure here only means its
	 * directory entry may not yet be durable, but it is still reported. */
	rc = fsync_parent_dir(af->target);
	if (rc)
		set_err(err, err_len, "%s: syncing directory: %s", af->target,
			strerror(-rc));
	return rc;
}

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
		set_err(err, err_len, "unknown format %u (expected 1 or 2)",
			o->format);
		return -EINVAL;
	}
	if (o->compression != APB_WRITER_STORE &&
	    o->compression != APB_WRITER_ZSTD) {
		set_err(err, err_len, "unknown compression");
		return -EINVAL;
	}
	if (o->chunk_size % APB_ALIGN != 0 || o->chunk_size > UINT32_MAX) {
		set_err(err, err_len,
			"chunk size %llu is not a multiple of 4096 up to 4 GiB",
			(unsigned long long)o->chunk_size);
		return -EINVAL;
	}
	if (o->format == 1 &&
	    (o->compression != APB_WRITER_STORE || o->chunk_size != 0)) {
		set_err(err, err_len,
			"compression and chunk size need format 2");
		return -EINVAL;
	}
	if (o->format == 2) {
		set_err(err, err_len, "format 2 is not supported yet");
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
	struct atomic_file af;
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
			set_err(j->err, j->err_len, "%s: model %s",
				j->e[i].path, msg);
			return -EINVAL;
		}
	}
	qsort(j->e, j->n, sizeof(*j->e), cmp_entry);
	for (size_t i = 1; i < j->n; i++) {
		if (strcmp(j->e[i - 1].name, j->e[i].name) == 0) {
			set_err(j->err, j->err_len,
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
		set_err(j->err, j->err_len, "%s: %s", j->out_path, msg);
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
			set_err(j->err, j->err_len, "%s: %s", e->path,
				rc == -EINVAL ? "not a regular file"
				: rc == -ELOOP ? "is the bundle being written"
					       : strerror(-rc));
			return rc;
		}
		e->size = (uint64_t)st.st_size;
		if (e->size >= JSON_EXACT_MAX - j->total) {
			set_err(j->err, j->err_len,
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
			set_err(j->err, j->err_len,
				"%s: bundle too large (2^53 bytes)", j->out_path);
			return -EFBIG;
		}
		rc = render_manifest(j, &json);
		if (rc)
			return rc;
		printed = strlen(json);
		free(json);
		if (printed > APB_MANIFEST_MAX) {
			set_err(j->err, j->err_len,
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
	set_err(j->err, j->err_len, "%s: %s", j->out_path, strerror(-rc));
	return rc;
}

static int cancel_err(char *err, size_t err_len, const char *path)
{
	set_err(err, err_len, "%s: interrupted", path);
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
	set_err(j->err, j->err_len, "%s: %s", e->path,
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
	if (inputs->n > APB_MODELS_MAX) {
		set_err(j->err, j->err_len, "%s: %zu models (at most %u)",
			j->out_path, inputs->n, APB_MODELS_MAX);
		return -EFBIG;
	}
	j->n = inputs->n;
	j->e = calloc(j->n ? j->n : 1, sizeof(*j->e));
	if (!j->e)
		return out_err(j, -ENOMEM);
	for (size_t i = 0; i < j->n; i++) {
		j->e[i].name = inputs->v[i].name;
		j->e[i].path = inputs->v[i].path;
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
	set_err(err, err_len, "%s: failed", out_path);
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
	rc = af_open(&j.af, out_path, err, err_len);
	if (rc)
		goto out;
	report(j.o, 0, j.total);
	rc = write_bundle(&j);
	if (rc == 0)
		rc = af_commit(&j.af, err, err_len);
out:
	af_abort(&j.af);
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
			struct atomic_file *af,
			const struct apb_writer_options *o, uint64_t *xxh3,
			char *err, size_t err_len)
{
	unsigned char *buf = malloc(COPY_BUF_BYTES);
	XXH3_state_t *st = XXH3_createState();
	uint64_t done = 0;
	int rc = 0;

	if (!buf || !st) {
		rc = -ENOMEM;
		set_err(err, err_len, "%s: %s", af->target, strerror(-rc));
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
			set_err(err, err_len, "%s: model '%s': %s", label,
				m->name, strerror(-rc));
			goto out;
		}
		XXH3_64bits_update(st, buf, (size_t)n);
		rc = write_all(af->fd, buf, (size_t)n);
		if (rc) {
			set_err(err, err_len, "%s: %s", af->target,
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
	struct atomic_file af = {.fd = -1};
	uint64_t got = 0;
	int rc;

	if (!m) {
		set_err(err, err_len, "%s: model %zu: no such model", label,
			index);
		return -ENOENT;
	}
	rc = af_open(&af, out_path, err, err_len);
	if (rc)
		return rc;
	rc = extract_copy(b, label, index, m, &af, o, &got, err, err_len);
	if (rc == 0 && cancelled(o))
		rc = cancel_err(err, err_len, out_path);
	if (rc == 0 && m->has_checksum && got != m->xxh3) {
		char have[APB_CHECKSUM_STRLEN + 1], want[APB_CHECKSUM_STRLEN + 1];

		apb_checksum_format(got, have);
		apb_checksum_format(m->xxh3, want);
		set_err(err, err_len, "%s: model '%s': checksum %s expected %s",
			label, m->name, have, want);
		rc = -EBADMSG;
	}
	if (rc == 0)
		rc = af_commit(&af, err, err_len);
	af_abort(&af);
	return rc;
}
