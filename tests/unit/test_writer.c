/* test_writer.c - what `apbundle create` writes (docs/FORMAT.md version 1, and
 * version 2 checked byte by byte against docs/FORMAT.md without the
 * reader), that it reads back through the reader byte for byte, that it is deterministic,
 * that a failed or cancelled write leaves nothing behind, how INPUT
 * arguments expand, and that extract refuses corrupt bytes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>
#include <zstd.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/writer.h"
#include "test.h"

static char dir[256];
static char err[1024];

/* ---- helpers ----------------------------------------------------------- */

static const char *at(const char *rel)
{
	static char bufs[8][512];
	static int next;
	char *p = bufs[next++ % 8];

	snprintf(p, 512, "%s/%s", dir, rel);
	return p;
}

/* Deterministic, non-zero-heavy bytes. */
static unsigned char *pattern(size_t len, unsigned seed)
{
	unsigned char *p = malloc(len ? len : 1);
	uint32_t x = seed * 2654435761u + 1;

	CHECK(p);
	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (unsigned char)(x >> 16) | 1;
	}
	return p;
}

static void put(const char *rel, const void *data, size_t len)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	CHECK(fd >= 0);
	CHECK_EQ(write(fd, data, len), (long long)len);
	close(fd);
}

static void put_pattern(const char *rel, size_t len, unsigned seed)
{
	unsigned char *p = pattern(len, seed);

	put(rel, p, len);
	free(p);
}

static unsigned char *slurp(const char *path, size_t *len)
{
	struct stat st;
	unsigned char *p;
	int fd = open(path, O_RDONLY);

	CHECK(fd >= 0);
	CHECK(fstat(fd, &st) == 0);
	p = malloc((size_t)st.st_size + 1);
	CHECK(p);
	CHECK_EQ(read(fd, p, (size_t)st.st_size), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* Number of directory entries of the test dir starting with prefix. */
static int count_prefixed(const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	CHECK(d);
	while ((de = readdir(d)))
		n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

static void fresh_dir(void)
{
	char cmd[300];

	if (dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		CHECK(system(cmd) == 0);
	}
	snprintf(dir, sizeof(dir), "%s/apb-writer-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	CHECK(mkdtemp(dir));
}

static struct apb_input_list *list_of(int n, const char *const *pairs)
{
	struct apb_input_list *l;

	CHECK_EQ(apb_input_list_new(&l), 0);
	for (int i = 0; i < n; i++)
		CHECK_EQ(apb_input_list_add(l, pairs[2 * i],
					    at(pairs[2 * i + 1])), 0);
	return l;
}

static int create(const char *out, struct apb_input_list *l)
{
	return apb_writer_create_bundle(at(out), l, NULL, err, sizeof(err));
}

/* With these options and the defaults for the rest. */
static int create_with(const char *out, struct apb_input_list *l,
		       unsigned format, enum apb_writer_compression comp,
		       uint64_t cs, unsigned threads)
{
	struct apb_writer_options o;

	apb_writer_options_init(&o);
	o.format = format;
	o.compression = comp;
	o.block_size = cs;
	o.threads = threads;
	return apb_writer_create_bundle(at(out), l, &o, err, sizeof(err));
}

static int create_v1(const char *out, struct apb_input_list *l)
{
	return create_with(out, l, 1, APB_WRITER_STORE, 0, 0);
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* Bytes zstd shrinks: text-like, with some variety. */
static unsigned char *compressible(size_t len, unsigned seed)
{
	unsigned char *p = malloc(len ? len : 1);

	CHECK(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)("weights of layer "[i % 17] +
					(i / 4096 + seed) % 3);
	return p;
}

static int create_v2(const char *out, struct apb_input_list *l,
		     enum apb_writer_compression comp, uint64_t cs,
		     unsigned threads)
{
	return create_with(out, l, 2, comp, cs, threads);
}

/* The failure left no bundle and no temporary file next to it. */
static void nothing_left(const char *out)
{
	char tmp[300];

	CHECK(!exists(at(out)));
	snprintf(tmp, sizeof(tmp), "%s.tmp.", out);
	CHECK_EQ(count_prefixed(tmp), 0);
}

/* ---- round trip ------------------------------------------------------- */

/* Even models compressible, odd ones not, for the zstd case. */
static unsigned char *model_bytes(size_t len, unsigned i)
{
	return i % 2 ? pattern(len, i) : compressible(len, i);
}

static void reads_back(unsigned format, enum apb_writer_compression comp,
		       uint64_t cs)
{
	static const size_t sizes[] = {5000, 0, 1, 4096, (1u << 20) * 2 + 7};
	static const char *const names[] = {"encoder", "empty", "one",
					    "bert/page", "bert/big.bin"};
	struct apb_input_list *l;
	struct apb_bundle *b;
	size_t idx;

	fresh_dir();
	CHECK_EQ(apb_input_list_new(&l), 0);
	for (int i = 0; i < 5; i++) {
		unsigned char *d = model_bytes(sizes[i], (unsigned)i);
		char rel[32];

		snprintf(rel, sizeof(rel), "in%d", i);
		put(rel, d, sizes[i]);
		free(d);
		CHECK_EQ(apb_input_list_add(l, names[i], at(rel)), 0);
	}
	CHECK_EQ(create_with("out.apbundle", l, format, comp, cs, 0), 0);
	apb_input_list_free(l);

	CHECK_EQ(apb_bundle_open(at("out.apbundle"), &b, err, sizeof(err)), 0);
	CHECK_EQ(apb_bundle_layout(b), format == 1 ? APB_LAYOUT_V1
						   : APB_LAYOUT_V2);
	CHECK_EQ(apb_bundle_count(b), 5);
	CHECK(strcmp(apb_bundle_model(b, 0)->name, "bert/big.bin") == 0);
	CHECK(strcmp(apb_bundle_model(b, 4)->name, "one") == 0);
	for (int i = 0; i < 5; i++) {
		unsigned char *want = model_bytes(sizes[i], (unsigned)i);
		unsigned char *got = malloc(sizes[i] + 1);
		const struct apb_model *m;

		CHECK_EQ(apb_bundle_find(b, names[i], &idx), 0);
		m = apb_bundle_model(b, idx);
		CHECK_EQ(m->size, sizes[i]);
		if (comp == APB_WRITER_STORE)
			CHECK_EQ(m->stored_size, sizes[i]);
		else if (i == 4) /* 2 MiB of text shrinks a lot */
			CHECK(m->stored_size < sizes[i] / 10);
		CHECK_EQ(m->compression, comp == APB_WRITER_ZSTD
						 ? APB_COMPRESSION_ZSTD
						 : APB_COMPRESSION_NONE);
		CHECK_EQ(m->block_size, format == 1 ? 0 : cs ? cs : 65536);
		CHECK(m->has_checksum);
		CHECK(m->xxh3 == XXH3_64bits(want, sizes[i]));
		CHECK_EQ(apb_bundle_read(b, idx, 0, got, sizes[i] + 1),
			 (long long)sizes[i]);
		CHECK(memcmp(got, want, sizes[i]) == 0);
		free(got);
		free(want);
	}
	apb_bundle_close(b);
}

static void written_bundle_reads_back_byte_for_byte(void)
{
	reads_back(1, APB_WRITER_STORE, 0);
	reads_back(2, APB_WRITER_STORE, 0);
	reads_back(2, APB_WRITER_STORE, 4096);
	reads_back(2, APB_WRITER_ZSTD, 0);
	reads_back(2, APB_WRITER_ZSTD, 1u << 20);
}

static void same_inputs_give_identical_bytes(void)
{
	static const char *const ab[] = {"a", "fa", "b/c", "fb", "z", "fz"};
	static const char *const ba[] = {"z", "fz", "b/c", "fb", "a", "fa"};
	struct apb_input_list *l1 = NULL, *l2 = NULL;
	unsigned char *x, *y;
	size_t nx, ny;

	fresh_dir();
	put_pattern("fa", 10000, 1);
	put_pattern("fb", 4096, 2);
	put_pattern("fz", 3, 3);
	l1 = list_of(3, ab);
	l2 = list_of(3, ba); /* same pairs, other order */
	CHECK_EQ(create("one.apbundle", l1), 0);
	CHECK_EQ(create("two.apbundle", l2), 0);
	x = slurp(at("one.apbundle"), &nx);
	y = slurp(at("two.apbundle"), &ny);
	CHECK_EQ(nx, ny);
	CHECK(memcmp(x, y, nx) == 0);
	free(x);
	free(y);
	apb_input_list_free(l1);
	apb_input_list_free(l2);
}

/* ---- the bytes of format 1 -------------------------------------------- */

/* Check header, manifest keys, alignment, zero gaps and file length; returns
 * the number of models. */
static int check_raw_layout(const char *path)
{
	size_t len, end, i = 0;
	unsigned char *f = slurp(path, &len);
	uint32_t mlen;
	cJSON *root, *models, *m;
	int count;

	CHECK(len >= 16);
	CHECK(memcmp(f, "APBUNDLE", 8) == 0);
	CHECK_EQ(le32(f + 8), 1);
	mlen = le32(f + 12);
	CHECK(16 + (size_t)mlen <= len);
	CHECK_EQ(f[16], '{');
	root = cJSON_ParseWithLength((const char *)f + 16, mlen);
	CHECK(root);
	CHECK_EQ(cJSON_GetArraySize(root), 2); /* exactly the two keys */
	CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root,
							      "model_count")));
	models = cJSON_GetObjectItemCaseSensitive(root, "models");
	CHECK(cJSON_IsArray(models));
	count = cJSON_GetArraySize(models);
	CHECK_EQ(cJSON_GetObjectItemCaseSensitive(root, "model_count")
			 ->valuedouble, count);
	end = 16 + mlen;
	cJSON_ArrayForEach(m, models) {
		uint64_t off, size, sum;
		const char *name;

		CHECK_EQ(cJSON_GetArraySize(m), 4);
		name = cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring;
		off = (uint64_t)cJSON_GetObjectItemCaseSensitive(m, "offset")
			      ->valuedouble;
		size = (uint64_t)cJSON_GetObjectItemCaseSensitive(m, "size")
			       ->valuedouble;
		CHECK_EQ(apb_checksum_parse(cJSON_GetObjectItemCaseSensitive(
						m, "checksum")->valuestring,
					    &sum), 0);
		CHECK_EQ(off % 4096, 0);
		CHECK(off >= end);
		CHECK(off + size <= len);
		for (size_t k = end; k < off; k++) /* the gap is zeros */
			CHECK_EQ(f[k], 0);
		CHECK(sum == XXH3_64bits(f + off, size));
		if (i > 0) { /* sorted by name, strcmp order */
			const cJSON *prev = cJSON_GetArrayItem(models, (int)i - 1);

			CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(prev, "name")
					     ->valuestring, name) < 0);
		}
		end = off + size;
		i++;
	}
	CHECK_EQ(len, end); /* nothing after the last model */
	cJSON_Delete(root);
	free(f);
	return count;
}

static void layout_is_aligned_with_zero_gaps_and_exact_manifest(void)
{
	static const char *const p[] = {"m1", "f1", "m2", "f2", "m3", "f3",
					"m0", "f0"};
	struct apb_input_list *l;
	size_t len;
	unsigned char *f;

	fresh_dir();
	put_pattern("f1", 1, 1);
	put_pattern("f2", 4097, 2);
	put_pattern("f3", 8192, 3);
	put_pattern("f0", 0, 4);
	l = list_of(4, p);
	CHECK_EQ(create_v1("out.apbundle", l), 0);
	CHECK_EQ(check_raw_layout(at("out.apbundle")), 4);
	f = slurp(at("out.apbundle"), &len);
	/* m0 (empty) at 4096, m1 also at 4096 (an empty model owns no byte),
	 * m2 at 8192 after m1's one byte, m3 after m2's 4097 bytes. */
	CHECK_STR_CONTAINS((const char *)f + 16,
			   "{\"model_count\":4,\"models\":[{\"name\":\"m0\","
			   "\"offset\":4096,\"size\":0,\"checksum\":\"xxh3-64:");
	CHECK_STR_CONTAINS((const char *)f + 16,
			   "\"name\":\"m3\",\"offset\":16384,\"size\":8192,");
	CHECK_EQ(len, 16384 + 8192);
	free(f);
	apb_input_list_free(l);
}

static void manifest_crossing_4096_bytes_still_lays_out(void)
{
	struct apb_input_list *l;
	struct apb_bundle *b;

	fresh_dir();
	put_pattern("one", 1, 9);
	CHECK_EQ(apb_input_list_new(&l), 0);
	for (int i = 0; i < 300; i++) { /* ~25 KB of manifest */
		char name[64];

		snprintf(name, sizeof(name), "model-%04d/weights.bin", i);
		CHECK_EQ(apb_input_list_add(l, name, at("one")), 0);
	}
	CHECK_EQ(create_v1("many.apbundle", l), 0);
	CHECK_EQ(check_raw_layout(at("many.apbundle")), 300);
	CHECK_EQ(apb_bundle_open(at("many.apbundle"), &b, err, sizeof(err)), 0);
	CHECK_EQ(apb_bundle_count(b), 300);
	apb_bundle_close(b);
	apb_input_list_free(l);
}

static void zero_inputs_give_an_empty_bundle(void)
{
	struct apb_input_list *l;
	struct apb_bundle *b;
	size_t len;
	unsigned char *f;

	fresh_dir();
	CHECK_EQ(apb_input_list_new(&l), 0);
	CHECK_EQ(create_v1("empty.apbundle", l), 0);
	CHECK_EQ(check_raw_layout(at("empty.apbundle")), 0);
	f = slurp(at("empty.apbundle"), &len);
	CHECK_EQ(len, 16 + strlen("{\"model_count\":0,\"models\":[]}"));
	CHECK(memcmp(f + 16, "{\"model_count\":0,\"models\":[]}", len - 16) == 0);
	free(f);
	CHECK_EQ(apb_bundle_open(at("empty.apbundle"), &b, err, sizeof(err)), 0);
	CHECK_EQ(apb_bundle_count(b), 0);
	apb_bundle_close(b);
	apb_input_list_free(l);
}

static void output_has_ordinary_file_permissions(void)
{
	static const char *const p[] = {"a", "fa"};
	struct apb_input_list *l;
	struct stat st;
	mode_t old = umask(022);

	fresh_dir();
	put_pattern("fa", 10, 1);
	l = list_of(1, p);
	CHECK_EQ(create("out.apbundle", l), 0);
	CHECK(stat(at("out.apbundle"), &st) == 0);
	CHECK_EQ(st.st_mode & 07777, 0644);
	umask(old);
	apb_input_list_free(l);
}

/* ---- failures leave nothing behind ------------------------------------ */

static void missing_input_is_named_and_nothing_is_written(void)
{
	static const char *const p[] = {"a", "fa", "b", "nope"};
	struct apb_input_list *l;

	fresh_dir();
	put_pattern("fa", 10, 1);
	l = list_of(2, p);
	CHECK_EQ(create("out.apbundle", l), -ENOENT);
	CHECK_STR_CONTAINS(err, "/nope: No such file or directory");
	nothing_left("out.apbundle");
	apb_input_list_free(l);
}

static void duplicate_names_name_both_files(void)
{
	static const char *const p[] = {"x", "fa", "x", "fb"};
	struct apb_input_list *l;

	fresh_dir();
	put_pattern("fa", 10, 1);
	put_pattern("fb", 10, 2);
	l = list_of(2, p);
	CHECK_EQ(create("out.apbundle", l), -EINVAL);
	CHECK_STR_CONTAINS(err, "model name 'x' is also given by");
	CHECK_STR_CONTAINS(err, "/fa");
	CHECK_STR_CONTAINS(err, "/fb");
	nothing_left("out.apbundle");
	apb_input_list_free(l);
}

static void invalid_names_are_refused_before_writing(void)
{
	static const char *const bad[] = {".stats", "../x", "/abs", "a//b",
					  "", "a/./b"};
	static const char *const clash[] = {"a", "fa", "a/b", "fa"};
	struct apb_input_list *l;

	fresh_dir();
	put_pattern("fa", 10, 1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *p[] = {bad[i], "fa"};

		l = list_of(1, p);
		CHECK_EQ(create("out.apbundle", l), -EINVAL);
		CHECK_STR_CONTAINS(err, "/fa: model name");
		nothing_left("out.apbundle");
		apb_input_list_free(l);
	}
	l = list_of(2, clash); /* a file that is also a directory */
	CHECK_EQ(create("out.apbundle", l), -EINVAL);
	nothing_left("out.apbundle");
	apb_input_list_free(l);
}

static void failed_write_keeps_the_old_bundle(void)
{
	static const char *const p[] = {"a", "missing"};
	struct apb_input_list *l;
	size_t len;
	unsigned char *f;

	fresh_dir();
	put("out.apbundle", "old", 3);
	l = list_of(1, p);
	CHECK(create("out.apbundle", l) < 0);
	f = slurp(at("out.apbundle"), &len);
	CHECK_EQ(len, 3);
	CHECK(memcmp(f, "old", 3) == 0);
	CHECK_EQ(count_prefixed("out.apbundle.tmp."), 0);
	free(f);
	apb_input_list_free(l);
}

static void output_that_is_a_directory_is_refused(void)
{
	static const char *const p[] = {"a", "fa"};
	struct apb_input_list *l;

	fresh_dir();
	put_pattern("fa", 10, 1);
	CHECK(mkdir(at("out.apbundle"), 0755) == 0);
	l = list_of(1, p);
	CHECK_EQ(create("out.apbundle", l), -EISDIR);
	CHECK_STR_CONTAINS(err, "out.apbundle: Is a directory");
	CHECK_EQ(count_prefixed("out.apbundle.tmp."), 0);
	apb_input_list_free(l);
}

static void output_is_never_packed_into_itself(void)
{
	static const char *const p[] = {"a", "fa", "old", "out.apbundle"};
	struct apb_input_list *l;

	fresh_dir();
	put_pattern("fa", 10, 1);
	put("out.apbundle", "old", 3);
	l = list_of(2, p);
	CHECK_EQ(create("out.apbundle", l), -ELOOP);
	CHECK_STR_CONTAINS(err, "/out.apbundle: is the bundle being written");
	CHECK_EQ(count_prefixed("out.apbundle.tmp."), 0);
	apb_input_list_free(l);
}

/* A full disk, played by RLIMIT_FSIZE: writes past it fail with EFBIG. */
static void failed_output_write_removes_the_temporary_file(void)
{
	static const char *const p[] = {"a", "fa"};
	struct apb_input_list *l;
	struct rlimit old, lim;
	void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);

	fresh_dir();
	put_pattern("fa", 200000, 1);
	l = list_of(1, p);
	CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
	lim = old;
	lim.rlim_cur = 100000;
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
	CHECK_EQ(create("out.apbundle", l), -EFBIG);
	CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
	signal(SIGXFSZ, old_handler);
	CHECK_STR_CONTAINS(err, "/out.apbundle: File too large");
	nothing_left("out.apbundle");
	apb_input_list_free(l);
}

/* Progress hooks that misbehave in the middle of a write. */
struct sabotage {
	const char *path;
	int mode; /* 0 cancel, 1 shrink, 2 grow */
	volatile sig_atomic_t flag;
	uint64_t last_done, last_total;
	int calls;
};

static void sabotage(void *arg, uint64_t done, uint64_t total)
{
	struct sabotage *s = arg;

	s->calls++;
	s->last_done = done;
	s->last_total = total;
	if (done == 0)
		return;
	if (s->mode == 0) {
		s->flag = 1;
	} else if (s->mode == 1) {
		CHECK(truncate(s->path, 1 << 20) == 0);
	} else if (s->mode == 2 && done == total) {
		int fd = open(s->path, O_WRONLY | O_APPEND);

		CHECK(fd >= 0);
		CHECK_EQ(write(fd, "x", 1), 1);
		close(fd);
	}
}

static int sabotaged_create(struct sabotage *s)
{
	static const char *const p[] = {"big", "big"};
	struct apb_writer_options o;
	struct apb_input_list *l;
	int rc;

	fresh_dir();
	put_pattern("big", (3u << 20) + 5, 7);
	s->path = at("big");
	l = list_of(1, p);
	apb_writer_options_init(&o);
	o.progress = sabotage;
	o.progress_arg = s;
	o.cancel = &s->flag;
	rc = apb_writer_create_bundle(at("out.apbundle"), l, &o, err,
				      sizeof(err));
	apb_input_list_free(l);
	return rc;
}

static void cancellation_removes_the_temporary_file(void)
{
	struct sabotage s = {.mode = 0};

	CHECK_EQ(sabotaged_create(&s), -EINTR);
	CHECK_STR_CONTAINS(err, "out.apbundle: interrupted");
	nothing_left("out.apbundle");
}

static void input_that_shrinks_while_read_fails_the_write(void)
{
	struct sabotage s = {.mode = 1};

	CHECK_EQ(sabotaged_create(&s), -EIO);
	CHECK_STR_CONTAINS(err, "/big: file changed size while being read");
	nothing_left("out.apbundle");
}

static void input_that_grows_while_read_fails_the_write(void)
{
	struct sabotage s = {.mode = 2};

	CHECK_EQ(sabotaged_create(&s), -EIO);
	CHECK_STR_CONTAINS(err, "/big: file changed size while being read");
	nothing_left("out.apbundle");
}

static void progress_reaches_the_total(void)
{
	struct sabotage s = {.mode = 3}; /* only records */

	CHECK_EQ(sabotaged_create(&s), 0);
	CHECK_EQ(s.last_total, (3u << 20) + 5);
	CHECK_EQ(s.last_done, s.last_total);
	CHECK(s.calls >= 4); /* 0, then one per MiB buffer */
}

/* ---- options ---------------------------------------------------------- */

static void options_are_checked(void)
{
	struct apb_writer_options o;
	struct apb_input_list *l;

	apb_writer_options_init(&o);
	CHECK_EQ(o.format, 2);
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);
	o.format = 3;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	o.format = 1;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);
	o.compression = APB_WRITER_ZSTD;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "compression and block size need format 2") == 0);
	o.compression = APB_WRITER_STORE;
	o.block_size = 65536;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	o.format = 2;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);
	o.block_size = 4096;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);
	o.block_size = 16u << 20;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);
	o.block_size = (16u << 20) + 4096;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	o.block_size = 5000;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "block size 5000 is not a multiple of 4096");
	o.block_size = 0;
	o.compression_level = 23;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), -EINVAL);
	o.compression_level = 22;
	CHECK_EQ(apb_writer_options_check(&o, err, sizeof(err)), 0);

	fresh_dir(); /* refused by create too, before anything exists */
	o.format = 1;
	o.compression = APB_WRITER_ZSTD;
	CHECK_EQ(apb_input_list_new(&l), 0);
	CHECK_EQ(apb_writer_create_bundle(at("o.apbundle"), l, &o, err,
					  sizeof(err)), -EINVAL);
	nothing_left("o.apbundle");
	apb_input_list_free(l);
}

/* ---- the bytes of format 2 -------------------------------------------- */

struct v2_source {
	const char *name;
	const unsigned char *data;
	size_t size;
};

struct v2_counts {
	int raw, zstd;
};

static uint64_t le64(const unsigned char *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static uint64_t num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	CHECK(cJSON_IsNumber(v));
	return (uint64_t)v->valuedouble;
}

static uint64_t sum_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	uint64_t x;

	CHECK(cJSON_IsString(v));
	CHECK_EQ(apb_checksum_parse(v->valuestring, &x), 0);
	return x;
}

/* Check one model's blocks against its source; marks the stored bytes. */
static void check_v2_blocks(const unsigned char *f, unsigned char *used,
			    const unsigned char *table, uint64_t off,
			    uint64_t stored, uint64_t first,
			    const struct v2_source *src, const char *comp,
			    uint64_t cs, struct v2_counts *n)
{
	uint64_t blocks = (src->size + cs - 1) / cs, end = off;
	bool zstd = strcmp(comp, "zstd") == 0;
	unsigned char *buf = malloc(cs);

	CHECK(buf);
	CHECK_EQ(off % 4096, 0);
	for (uint64_t i = 0; i < blocks; i++) {
		const unsigned char *e = table + (first + i) * 24;
		uint64_t at = le64(e), len = le32(e + 8), flags = le32(e + 12);
		const unsigned char *want = src->data + i * cs;
		uint64_t ulen = src->size - i * cs < cs ? src->size - i * cs : cs;

		CHECK(at >= end); /* increasing, no overlap */
		CHECK(at + len <= off + stored);
		CHECK(le64(e + 16) == XXH3_64bits(want, ulen));
		if (flags == 0) {
			CHECK_EQ(at % 4096, 0);
			CHECK_EQ(len, ulen);
			CHECK(memcmp(f + at, want, ulen) == 0);
			if (!zstd) /* back to back */
				CHECK_EQ(at, off + i * cs);
			n->raw++;
		} else {
			CHECK_EQ(flags, 1);
			CHECK(zstd);
			CHECK(len > 0 && len < ulen); /* stored only if smaller */
			CHECK_EQ(ZSTD_decompress(buf, cs, f + at, len), ulen);
			CHECK(memcmp(buf, want, ulen) == 0);
			n->zstd++;
		}
		memset(used + at, 1, len);
		end = at + len;
	}
	CHECK_EQ(stored, end - off); /* nothing stored past the last block */
	free(buf);
}

/*
 * Check a format 2 file against the design, independently of the reader:
 * header, space-padded manifest with exactly the documented keys, models
 * in name order matching src (sorted the same way), each block's entry,
 * bytes and XXH3, the table's place and checksum, and zeros everywhere
 * else. Returns how many blocks are raw and how many zstd.
 */
static struct v2_counts check_v2_layout(const char *path,
					const struct v2_source *src, int count,
					const char *comp, uint64_t cs)
{
	size_t len, jlen;
	unsigned char *f = slurp(path, &len), *used = calloc(len + 1, 1);
	struct v2_counts n = {0, 0};
	uint64_t mlen, t, entries, next_block = 0;
	cJSON *root, *table, *models;
	bool zstd = strcmp(comp, "zstd") == 0;

	CHECK(used);
	CHECK(len >= 16);
	CHECK(memcmp(f, "APBUNDLE", 8) == 0);
	CHECK_EQ(le32(f + 8), 2);
	mlen = le32(f + 12);
	CHECK(16 + mlen <= len);
	jlen = mlen;
	while (jlen > 0 && f[16 + jlen - 1] == ' ') /* padding */
		jlen--;
	CHECK_EQ(f[16 + jlen - 1], '}');
	root = cJSON_ParseWithLength((const char *)f + 16, jlen);
	CHECK(root);
	/* The models' defaults (docs/FORMAT.md) at the top level, when
	 * they are not the format's. */
	CHECK_EQ(cJSON_GetArraySize(root), 3 + zstd + (cs != 65536));
	CHECK_EQ(num(root, "model_count"), count);
	if (zstd)
		CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(root, "compression")
				     ->valuestring, "zstd") == 0);
	if (cs != 65536)
		CHECK_EQ(num(root, "chunk_size"), cs);
	table = cJSON_GetObjectItemCaseSensitive(root, "chunk_table");
	CHECK(cJSON_IsObject(table));
	CHECK_EQ(cJSON_GetArraySize(table), 3);
	t = num(table, "offset");
	entries = num(table, "count");
	CHECK_EQ(t % 8, 0);
	CHECK(t >= 16 + mlen);
	CHECK_EQ(t + entries * 24, len); /* the table ends the file */
	CHECK(sum_of(table, "checksum") == XXH3_64bits(f + t, entries * 24));
	memset(used, 1, 16 + mlen);
	memset(used + t, 1, entries * 24);
	models = cJSON_GetObjectItemCaseSensitive(root, "models");
	CHECK_EQ(cJSON_GetArraySize(models), count);
	for (int i = 0; i < count; i++) {
		const cJSON *m = cJSON_GetArrayItem(models, i);
		uint64_t stored;

		uint64_t blocks = (src[i].size + cs - 1) / cs, off;

		/* Every key with a default is left out: the offset and
		 * stored size (the extent of the model's blocks), the
		 * compression and chunk_size (the top level's), first_chunk
		 * (the entry after the previous model's). */
		CHECK_EQ(cJSON_GetArraySize(m), 3);
		CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(m, "name")
				     ->valuestring, src[i].name) == 0);
		CHECK_EQ(num(m, "size"), src[i].size);
		CHECK(sum_of(m, "checksum") ==
		      XXH3_64bits(src[i].data, src[i].size));
		if (blocks) {
			const unsigned char *e = f + t + next_block * 24;
			const unsigned char *last = e + (blocks - 1) * 24;

			off = le64(e);
			stored = le64(last) + le32(last + 8) - off;
			CHECK(off >= 16 + mlen);
			CHECK(off + stored <= t);
			check_v2_blocks(f, used, f + t, off, stored,
					next_block, &src[i], comp, cs, &n);
		}
		next_block += blocks;
	}
	CHECK_EQ(entries, next_block); /* every entry belongs to a model */
	for (size_t k = 0; k < len; k++) /* padding is zeros */
		CHECK(used[k] || f[k] == 0);
	cJSON_Delete(root);
	free(used);
	free(f);
	return n;
}

/* Sizes around block boundaries, in both compressions and two block
 * sizes; a model whose second half is random gets raw blocks between
 * frames, 4096-aligned. */
static void v2_bytes_follow_the_design(void)
{
	static const uint64_t block_sizes[] = {4096, 65536};
	static const char *const names[] = {"a0", "a1", "a4095", "a4096",
					    "a4097", "b0_cs-1", "b1_cs", "b2_cs+1",
					    "c_3cs+5", "d_mixed"};

	for (int k = 0; k < 2; k++) {
		uint64_t cs = block_sizes[k];
		size_t sizes[] = {0, 1, 4095, 4096, 4097, cs - 1, cs, cs + 1,
				  3 * cs + 5, 6 * cs + 100};
		struct v2_source src[10];
		struct apb_input_list *l;
		unsigned char *data[10];

		fresh_dir();
		CHECK_EQ(apb_input_list_new(&l), 0);
		for (int i = 0; i < 10; i++) {
			char rel[32];

			data[i] = compressible(sizes[i], (unsigned)i);
			if (i == 9) { /* random second half */
				unsigned char *r = pattern(sizes[i] / 2, 5);

				memcpy(data[i] + sizes[i] / 2, r, sizes[i] / 2);
				free(r);
			}
			snprintf(rel, sizeof(rel), "in%d", i);
			put(rel, data[i], sizes[i]);
			CHECK_EQ(apb_input_list_add(l, names[i], at(rel)), 0);
			src[i] = (struct v2_source){names[i], data[i], sizes[i]};
		}
		for (int z = 0; z < 2; z++) {
			struct v2_counts n;

			CHECK_EQ(create_v2(z ? "z.apbundle" : "n.apbundle", l,
					   z ? APB_WRITER_ZSTD : APB_WRITER_STORE,
					   cs, 2), 0);
			n = check_v2_layout(at(z ? "z.apbundle" : "n.apbundle"),
					    src, 10, z ? "zstd" : "none", cs);
			if (z) {
				CHECK(n.zstd > 0);
				CHECK(n.raw >= 3); /* "a1" and d's random half */
			} else {
				CHECK_EQ(n.zstd, 0);
			}
		}
		for (int i = 0; i < 10; i++)
			free(data[i]);
		apb_input_list_free(l);
	}
}

static void v2_default_block_size_and_empty_bundle(void)
{
	static const char *const p[] = {"m", "fm"};
	struct v2_source src;
	struct apb_input_list *l;
	unsigned char *d = compressible(200000, 1);

	fresh_dir();
	put("fm", d, 200000);
	l = list_of(1, p);
	CHECK_EQ(create("out.apbundle", l), 0); /* format 2 by default */
	src = (struct v2_source){"m", d, 200000};
	check_v2_layout(at("out.apbundle"), &src, 1, "none", 65536);
	apb_input_list_free(l);
	free(d);

	CHECK_EQ(apb_input_list_new(&l), 0);
	CHECK_EQ(create("empty.apbundle", l), 0);
	check_v2_layout(at("empty.apbundle"), NULL, 0, "none", 65536);
	apb_input_list_free(l);
}

/* Workers finish out of order; the file must not show it. */
static void v2_bytes_do_not_depend_on_threads(void)
{
	static const char *const p[] = {"a", "fa", "b", "fb"};
	struct apb_input_list *l;
	unsigned char *x, *y, *d = compressible(5u << 20, 3);
	size_t nx, ny;

	fresh_dir();
	put("fa", d, 5u << 20);
	put_pattern("fb", (1u << 20) + 3, 4);
	l = list_of(2, p);
	CHECK_EQ(create_v2("one.apbundle", l, APB_WRITER_ZSTD, 8192, 1), 0);
	CHECK_EQ(create_v2("four.apbundle", l, APB_WRITER_ZSTD, 8192, 4), 0);
	x = slurp(at("one.apbundle"), &nx);
	y = slurp(at("four.apbundle"), &ny);
	CHECK_EQ(nx, ny);
	CHECK(memcmp(x, y, nx) == 0);
	CHECK(nx < (5u << 20)); /* it did compress */
	free(x);
	free(y);
	free(d);
	apb_input_list_free(l);
}

/* The cap on table entries is checked before anything is allocated or
 * created: a sparse 64 GiB input in 4 KiB blocks is 2^24 + 1 of them. */
static void v2_too_many_blocks_is_refused_up_front(void)
{
	static const char *const p[] = {"huge", "huge"};
	struct apb_input_list *l;
	int fd;

	fresh_dir();
	fd = open(at("huge"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, (off_t)((UINT64_C(1) << 24) * 4096 + 1)) == 0);
	close(fd);
	l = list_of(1, p);
	CHECK_EQ(create_v2("out.apbundle", l, APB_WRITER_STORE, 4096, 1),
		 -EFBIG);
	CHECK_STR_CONTAINS(err, "16777217 blocks (at most 16777216)");
	nothing_left("out.apbundle");
	apb_input_list_free(l);
}

/* ---- INPUT arguments -------------------------------------------------- */

static void add_arg(struct apb_input_list *l, const char *arg)
{
	CHECK_EQ(apb_input_list_add_arg(l, arg, err, sizeof(err)), 0);
}

static void check_entry(struct apb_input_list *l, size_t i, const char *name,
			const char *path_suffix)
{
	const char *path = apb_input_list_path(l, i);
	size_t pl = strlen(path), sl = strlen(path_suffix);

	CHECK(strcmp(apb_input_list_name(l, i), name) == 0);
	CHECK(pl >= sl && strcmp(path + pl - sl, path_suffix) == 0);
}

static void file_and_name_equals_file_arguments(void)
{
	struct apb_input_list *l;
	char arg[600];

	fresh_dir();
	put_pattern("weights.bin", 3, 1);
	put_pattern("a=b.bin", 3, 1);
	CHECK_EQ(apb_input_list_new(&l), 0);
	add_arg(l, at("weights.bin"));
	snprintf(arg, sizeof(arg), "enc/w.bin=%s", at("weights.bin"));
	add_arg(l, arg);
	snprintf(arg, sizeof(arg), "eq=%s", at("a=b.bin")); /* first '=' */
	add_arg(l, arg);
	CHECK_EQ(apb_input_list_count(l), 3);
	check_entry(l, 0, "weights.bin", "/weights.bin");
	check_entry(l, 1, "enc/w.bin", "/weights.bin");
	check_entry(l, 2, "eq", "/a=b.bin");

	CHECK_EQ(apb_input_list_add_arg(l, at("absent"), err, sizeof(err)),
		 -ENOENT);
	CHECK_STR_CONTAINS(err, "/absent: No such file or directory");
	snprintf(arg, sizeof(arg), "=%s", at("weights.bin"));
	CHECK_EQ(apb_input_list_add_arg(l, arg, err, sizeof(err)), -EINVAL);
	CHECK_EQ(apb_input_list_add_arg(l, "x=", err, sizeof(err)), -EINVAL);
	CHECK_EQ(apb_input_list_count(l), 3);
	apb_input_list_free(l);
}

static void directory_arguments_walk_regular_files(void)
{
	struct apb_input_list *l;
	char arg[600];

	fresh_dir();
	CHECK(mkdir(at("hf"), 0755) == 0);
	CHECK(mkdir(at("hf/onnx"), 0755) == 0);
	CHECK(mkdir(at("outside"), 0755) == 0);
	put_pattern("hf/config.json", 5, 1);
	put_pattern("hf/onnx/model.onnx", 5, 2);
	put_pattern("outside/blob", 5, 3);
	put_pattern("outside/inner", 5, 4);
	CHECK(symlink("../outside/blob", at("hf/linked.bin")) == 0);
	CHECK(symlink("../outside", at("hf/linkdir")) == 0);
	CHECK(mkfifo(at("hf/fifo"), 0644) == 0);

	CHECK_EQ(apb_input_list_new(&l), 0);
	add_arg(l, at("hf"));
	snprintf(arg, sizeof(arg), "bert=%s/", at("hf"));
	add_arg(l, arg);
	CHECK_EQ(apb_input_list_count(l), 6);
	check_entry(l, 0, "config.json", "/hf/config.json");
	check_entry(l, 1, "linked.bin", "/hf/linked.bin"); /* link followed */
	check_entry(l, 2, "onnx/model.onnx", "/hf/onnx/model.onnx");
	check_entry(l, 3, "bert/config.json", "/hf/config.json");
	check_entry(l, 4, "bert/linked.bin", "/hf/linked.bin");
	check_entry(l, 5, "bert/onnx/model.onnx", "/hf/onnx/model.onnx");
	apb_input_list_free(l);

	/* a dangling link below DIR is an error naming it */
	CHECK(symlink("nowhere", at("hf/dangling")) == 0);
	CHECK_EQ(apb_input_list_new(&l), 0);
	CHECK_EQ(apb_input_list_add_arg(l, at("hf"), err, sizeof(err)),
		 -ENOENT);
	CHECK_STR_CONTAINS(err, "/hf/dangling: No such file or directory");
	/* a FIFO given directly is not a model */
	CHECK_EQ(apb_input_list_add_arg(l, at("hf/fifo"), err, sizeof(err)),
		 -EINVAL);
	CHECK_STR_CONTAINS(err, "/hf/fifo: not a regular file");
	apb_input_list_free(l);
}

static void a_walked_directory_makes_a_bundle(void)
{
	struct apb_input_list *l;
	struct apb_bundle *b;
	size_t idx;

	fresh_dir();
	CHECK(mkdir(at("m"), 0755) == 0);
	CHECK(mkdir(at("m/sub"), 0755) == 0);
	put_pattern("m/a", 100, 1);
	put_pattern("m/sub/b", 100, 2);
	CHECK_EQ(apb_input_list_new(&l), 0);
	add_arg(l, at("m"));
	CHECK_EQ(create("m.apbundle", l), 0);
	CHECK_EQ(apb_bundle_open(at("m.apbundle"), &b, err, sizeof(err)), 0);
	CHECK_EQ(apb_bundle_find(b, "sub/b", &idx), 0);
	apb_bundle_close(b);
	apb_input_list_free(l);
}

/* ---- extract ---------------------------------------------------------- */

/* Format 1 has only the whole-model checksum; format 2 names the block
 * (the flipped byte is in block 1 of 64 KiB). Check reports the same. */
static void extract_and_check_refuse_corrupt_bytes(unsigned format)
{
	static const char *const p[] = {"w/model.bin", "f"};
	struct apb_input_list *l;
	struct apb_bundle *b;
	unsigned char *want, *got;
	size_t len;
	int fd;

	fresh_dir();
	put_pattern("f", 70000, 5);
	l = list_of(1, p);
	CHECK_EQ(create_with("x.apbundle", l, format, APB_WRITER_STORE, 0, 0),
		 0);
	CHECK_EQ(apb_bundle_open(at("x.apbundle"), &b, err, sizeof(err)), 0);
	CHECK_EQ(apb_writer_extract_model(b, "x.apbundle", 0, at("out.bin"),
					  NULL, err, sizeof(err)), 0);
	CHECK_EQ(apb_writer_check_model(b, "x.apbundle", 0, NULL, err,
					sizeof(err)), 0);
	want = pattern(70000, 5);
	got = slurp(at("out.bin"), &len);
	CHECK_EQ(len, 70000);
	CHECK(memcmp(got, want, len) == 0);
	free(got);
	free(want);
	CHECK_EQ(apb_writer_extract_model(b, "x.apbundle", 1, at("o2"), NULL,
					  err, sizeof(err)), -ENOENT);
	CHECK_EQ(apb_writer_check_model(b, "x.apbundle", 1, NULL, err,
					sizeof(err)), -ENOENT);
	apb_bundle_close(b);

	/* flip one byte of the model's data */
	fd = open(at("x.apbundle"), O_WRONLY);
	CHECK(fd >= 0);
	CHECK_EQ(pwrite(fd, "\0", 1, 4096 + 65536 + 1234), 1);
	close(fd);
	CHECK_EQ(apb_bundle_open(at("x.apbundle"), &b, err, sizeof(err)), 0);
	for (int check = 0; check < 2; check++) {
		CHECK_EQ(check ? apb_writer_check_model(b, "x.apbundle", 0, NULL,
							err, sizeof(err))
			       : apb_writer_extract_model(b, "x.apbundle", 0,
							  at("bad.bin"), NULL,
							  err, sizeof(err)),
			 -EBADMSG);
		if (format == 1) {
			CHECK_STR_CONTAINS(err, "x.apbundle: model "
					   "'w/model.bin': checksum xxh3-64:");
			CHECK_STR_CONTAINS(err, " expected xxh3-64:");
		} else {
			CHECK(strcmp(err, "x.apbundle: model 'w/model.bin' "
				     "block 1: checksum mismatch") == 0);
		}
		nothing_left("bad.bin");
	}
	apb_bundle_close(b);
	apb_input_list_free(l);
}

static void extract_copies_and_refuses_corrupt_bytes(void)
{
	extract_and_check_refuse_corrupt_bytes(1);
	extract_and_check_refuse_corrupt_bytes(2);
}

/* ---- checksums -------------------------------------------------------- */

static void checksum_spelling_is_strict(void)
{
	char s[APB_CHECKSUM_STRLEN + 1];
	uint64_t v = 0;

	apb_checksum_format(0x0123456789abcdefull, s);
	CHECK(strcmp(s, "xxh3-64:0123456789abcdef") == 0);
	CHECK_EQ(apb_checksum_parse(s, &v), 0);
	CHECK(v == 0x0123456789abcdefull);
	apb_checksum_format(0, s);
	CHECK(strcmp(s, "xxh3-64:0000000000000000") == 0);
	CHECK_EQ(apb_checksum_parse("xxh3-64:0123456789ABCDEF", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("xxh3-64:0123456789abcde", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("xxh3-64:0123456789abcdef0", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("xxh3-64:0123456789abcdef ", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("xxh64:0123456789abcdef", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("XXH3-64:0123456789abcdef", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("xxh3-64:0x23456789abcdef", &v), -EINVAL);
	CHECK_EQ(apb_checksum_parse("", &v), -EINVAL);
}

static void checksum_fd_streams_a_range(void)
{
	size_t len = (3u << 20) + 11;
	unsigned char *p;
	uint64_t v = 0;
	int fd;

	fresh_dir();
	put_pattern("f", len, 3);
	p = pattern(len, 3);
	fd = open(at("f"), O_RDONLY);
	CHECK(fd >= 0);
	CHECK_EQ(apb_checksum_fd(fd, 0, len, &v, NULL, NULL), 0);
	CHECK(v == XXH3_64bits(p, len));
	CHECK_EQ(apb_checksum_fd(fd, 100, 5000, &v, NULL, NULL), 0);
	CHECK(v == XXH3_64bits(p + 100, 5000));
	CHECK_EQ(apb_checksum_fd(fd, 0, 0, &v, NULL, NULL), 0);
	CHECK(v == XXH3_64bits("", 0));
	CHECK_EQ(apb_checksum_fd(fd, 10, len, &v, NULL, NULL), -EIO);
	close(fd);
	free(p);
}

int main(void)
{
	RUN(written_bundle_reads_back_byte_for_byte);
	RUN(same_inputs_give_identical_bytes);
	RUN(layout_is_aligned_with_zero_gaps_and_exact_manifest);
	RUN(manifest_crossing_4096_bytes_still_lays_out);
	RUN(zero_inputs_give_an_empty_bundle);
	RUN(output_has_ordinary_file_permissions);
	RUN(missing_input_is_named_and_nothing_is_written);
	RUN(duplicate_names_name_both_files);
	RUN(invalid_names_are_refused_before_writing);
	RUN(failed_write_keeps_the_old_bundle);
	RUN(output_that_is_a_directory_is_refused);
	RUN(output_is_never_packed_into_itself);
	RUN(failed_output_write_removes_the_temporary_file);
	RUN(cancellation_removes_the_temporary_file);
	RUN(input_that_shrinks_while_read_fails_the_write);
	RUN(input_that_grows_while_read_fails_the_write);
	RUN(progress_reaches_the_total);
	RUN(options_are_checked);
	RUN(v2_bytes_follow_the_design);
	RUN(v2_default_block_size_and_empty_bundle);
	RUN(v2_bytes_do_not_depend_on_threads);
	RUN(v2_too_many_blocks_is_refused_up_front);
	RUN(file_and_name_equals_file_arguments);
	RUN(directory_arguments_walk_regular_files);
	RUN(a_walked_directory_makes_a_bundle);
	RUN(extract_copies_and_refuses_corrupt_bytes);
	RUN(checksum_spelling_is_strict);
	RUN(checksum_fd_streams_a_range);
	fresh_dir(); /* removes the last one's files */
	rmdir(dir);
	return 0;
}
