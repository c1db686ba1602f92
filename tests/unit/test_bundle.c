/*
 * test_bundle.c - apb_bundle_open() and friends (include/apbundle/bundle.h).
 *
 * Bundles are built byte by byte in memory, written to a temporary file
 * and opened. Round trips pin down what a valid bundle exposes (name
 * order, sizes, offsets, checksums, reads); then every validation rule has
 * its own test asserting -EINVAL and the distinctive part of its message.
 * JSON manifests are written with ' for " to keep them readable.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "apbundle/bundle.h"
#include "buf.h"
#include "test.h"

/* ---- building files ---------------------------------------------------- */

/* Version 1 header + manifest, zero-padded to file_size. */
static struct buf v1_file(const char *manifest_sq, size_t file_size)
{
	struct buf b = {0};
	char *m = json(manifest_sq);

	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, (uint32_t)strlen(m));
	put_str(&b, m);
	pad_to(&b, file_size);
	free(m);
	return b;
}

static void expect_v1_error(const char *manifest_sq, size_t file_size,
			    const char *needle)
{
	struct buf b = v1_file(manifest_sq, file_size);

	expect_error(&b, needle);
}

/* One model "m" with every field valid except where a test changes it. */
#define ONE_MODEL(fields) "{'model_count':1,'models':[{" fields "}]}"
#define OK_CHECKSUM "'checksum':'xxh3-64:0123456789abcdef'"

static void pattern(uint8_t *d, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		d[i] = (uint8_t)(i * 7 + seed + i / 251);
}

/* ---- version 1 round trip ---------------------------------------------- */

struct v1_fixture {
	struct buf file;
	uint8_t enc[5000], cfg[10];
};

/* Three models listed out of name order: encoder, bert/config.json, a. */
static void make_v1_fixture(struct v1_fixture *f)
{
	char m[1024];

	pattern(f->enc, sizeof f->enc, 1);
	pattern(f->cfg, sizeof f->cfg, 2);
	snprintf(m, sizeof m,
		 "{'model_count':3,'future_key':{'x':[1,2]},'models':["
		 "{'name':'encoder','offset':4096,'size':5000,'checksum':'xxh3-64:%016llx'},"
		 "{'name':'bert/config.json','offset':12288,'size':10,'checksum':'xxh3-64:%016llx','extra':true},"
		 "{'name':'a','offset':16384,'size':0,'checksum':'xxh3-64:%016llx'}]}",
		 (unsigned long long)XXH3_64bits(f->enc, sizeof f->enc),
		 (unsigned long long)XXH3_64bits(f->cfg, sizeof f->cfg),
		 (unsigned long long)XXH3_64bits(NULL, 0));
	f->file = v1_file(m, 4096);
	put_at(&f->file, 4096, f->enc, sizeof f->enc);
	put_at(&f->file, 12288, f->cfg, sizeof f->cfg);
	pad_to(&f->file, 16384);
}

static void v1_models_are_sorted_by_name_with_sizes_offsets_checksums(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	const struct apb_model *m;

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	CHECK_EQ(apb_bundle_layout(b), APB_LAYOUT_V1);
	CHECK_EQ(apb_bundle_count(b), 3);
	CHECK_EQ(apb_bundle_stat(b)->st_size, 16384);

	m = apb_bundle_model(b, 0);
	CHECK(strcmp(m->name, "a") == 0);
	CHECK_EQ(m->size, 0);
	CHECK_EQ(m->offset, 16384);
	CHECK_EQ(m->xxh3, XXH3_64bits(NULL, 0));

	m = apb_bundle_model(b, 1);
	CHECK(strcmp(m->name, "bert/config.json") == 0);
	CHECK_EQ(m->size, 10);
	CHECK_EQ(m->stored_size, 10);
	CHECK_EQ(m->offset, 12288);
	CHECK(m->has_checksum);
	CHECK_EQ(m->xxh3, XXH3_64bits(f.cfg, sizeof f.cfg));

	m = apb_bundle_model(b, 2);
	CHECK(strcmp(m->name, "encoder") == 0);
	CHECK_EQ(m->size, 5000);
	CHECK_EQ(m->offset, 4096);
	CHECK_EQ(m->xxh3, XXH3_64bits(f.enc, sizeof f.enc));

	CHECK(apb_bundle_model(b, 3) == NULL);
	apb_bundle_close(b);
	free(f.file.p);
}

static void find_returns_index_in_name_order(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	size_t i = 99;

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	CHECK_EQ(apb_bundle_find(b, "encoder", &i), 0);
	CHECK_EQ(i, 2);
	CHECK_EQ(apb_bundle_find(b, "a", &i), 0);
	CHECK_EQ(i, 0);
	CHECK_EQ(apb_bundle_find(b, "bert", &i), -ENOENT);
	CHECK_EQ(apb_bundle_find(b, "zzz", &i), -ENOENT);
	CHECK_EQ(apb_bundle_find(b, "", &i), -ENOENT);
	apb_bundle_close(b);
	free(f.file.p);
}

static void read_returns_model_bytes_at_any_offset(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	static uint8_t out[8192];

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	CHECK_EQ(apb_bundle_read(b, 2, 0, out, 5000), 5000);
	CHECK(memcmp(out, f.enc, 5000) == 0);
	CHECK_EQ(apb_bundle_read(b, 2, 123, out, 10), 10);
	CHECK(memcmp(out, f.enc + 123, 10) == 0);
	CHECK_EQ(apb_bundle_read(b, 2, 4095, out, 2), 2);
	CHECK(memcmp(out, f.enc + 4095, 2) == 0);
	CHECK_EQ(apb_bundle_read(b, 1, 0, out, sizeof out), 10);
	CHECK(memcmp(out, f.cfg, 10) == 0);
	CHECK_EQ(apb_bundle_read(b, 2, 1, out, 0), 0);
	apb_bundle_close(b);
	free(f.file.p);
}

static void read_is_short_at_end_and_zero_at_or_past_it(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	static uint8_t out[8192];

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	CHECK_EQ(apb_bundle_read(b, 2, 4000, out, 4096), 1000);
	CHECK(memcmp(out, f.enc + 4000, 1000) == 0);
	CHECK_EQ(apb_bundle_read(b, 2, 5000, out, 10), 0);
	CHECK_EQ(apb_bundle_read(b, 2, 6000, out, 10), 0);
	CHECK_EQ(apb_bundle_read(b, 2, UINT64_MAX, out, 10), 0);
	CHECK_EQ(apb_bundle_read(b, 0, 0, out, 10), 0); /* empty model */
	CHECK_EQ(apb_bundle_read(b, 3, 0, out, 10), -EINVAL);
	apb_bundle_close(b);
	free(f.file.p);
}

static void read_of_truncated_backing_file_is_eio(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	uint8_t out[16], x[16], y[16];
	struct iovec iov[2] = { { x, sizeof x }, { y, sizeof y } };
	int fd;

	make_v1_fixture(&f);
	fd = write_temp(&f.file);
	CHECK_EQ(apb_bundle_open(path, &b, err, sizeof err), 0);
	CHECK_EQ(ftruncate(fd, 8192), 0);
	CHECK_EQ(apb_bundle_read(b, 2, 0, out, sizeof out), sizeof out);
	CHECK_EQ(apb_bundle_read(b, 1, 0, out, sizeof out), -EIO);
	CHECK_EQ(apb_bundle_read(b, 2, 4096, out, sizeof out), -EIO);
	/* the same, scattered into two buffers */
	CHECK_EQ(apb_bundle_preadv(b, 2, 0, iov, 2, NULL), 32);
	CHECK(memcmp(x, f.enc, 16) == 0 && memcmp(y, f.enc + 16, 16) == 0);
	CHECK_EQ(apb_bundle_preadv(b, 1, 0, iov, 2, NULL), -EIO);
	apb_bundle_close(b);
	unlink(path);
	close(fd);
	free(f.file.p);
}

static void readv_scatters_model_bytes_in_order(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	static uint8_t a[2000], c[2000], d[2000];
	struct iovec iov[4] = {
		{ a, sizeof a }, { NULL, 0 }, { c, sizeof c }, { d, sizeof d },
	};

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	memset(d, 0xee, sizeof d);
	/* 6000 bytes asked from 100: clipped at the model's 5000. */
	CHECK_EQ(apb_bundle_preadv(b, 2, 100, iov, 4, NULL), 4900);
	CHECK(memcmp(a, f.enc + 100, 2000) == 0);
	CHECK(memcmp(c, f.enc + 2100, 2000) == 0);
	CHECK(memcmp(d, f.enc + 4100, 900) == 0);
	CHECK_EQ(d[900], 0xee); /* past the model's end: untouched */
	CHECK_EQ(apb_bundle_preadv(b, 2, 5000, iov, 4, NULL), 0);
	CHECK_EQ(apb_bundle_preadv(b, 2, 0, iov, 0, NULL), 0);
	CHECK_EQ(apb_bundle_preadv(b, 3, 0, iov, 4, NULL), -EINVAL);
	CHECK_EQ(apb_bundle_preadv(b, 2, 0, iov, -1, NULL), -EINVAL);
	apb_bundle_close(b);
	free(f.file.p);
}

static void readv_takes_more_iovecs_than_one_batch(void)
{
	struct v1_fixture f;
	struct apb_bundle *b;
	static uint8_t out[5000];
	struct iovec iov[100];

	make_v1_fixture(&f);
	CHECK_EQ(open_buf(&f.file, &b), 0);
	for (int i = 0; i < 100; i++) {
		iov[i].iov_base = out + i * 50;
		iov[i].iov_len = 50;
	}
	CHECK_EQ(apb_bundle_preadv(b, 2, 0, iov, 100, NULL), 5000);
	CHECK(memcmp(out, f.enc, 5000) == 0);
	apb_bundle_close(b);
	free(f.file.p);
}

static void empty_models_may_share_an_offset(void)
{
	struct buf b = v1_file(
		"{'model_count':2,'models':["
		"{'name':'x','offset':4096,'size':0," OK_CHECKSUM "},"
		"{'name':'y','offset':4096,'size':0," OK_CHECKSUM "}]}",
		4096);
	struct apb_bundle *bundle;

	CHECK_EQ(open_buf(&b, &bundle), 0);
	CHECK_EQ(apb_bundle_count(bundle), 2);
	apb_bundle_close(bundle);
	free(b.p);
}

static void bundle_with_no_models_opens(void)
{
	struct buf b = v1_file("{'model_count':0,'models':[]}  \n", 0);
	struct apb_bundle *bundle;

	CHECK_EQ(open_buf(&b, &bundle), 0);
	CHECK_EQ(apb_bundle_count(bundle), 0);
	CHECK_EQ(apb_bundle_find(bundle, "a", &(size_t){0}), -ENOENT);
	apb_bundle_close(bundle);
	free(b.p);
}

static void missing_file_reports_open_errno(void)
{
	struct apb_bundle *b;

	CHECK_EQ(apb_bundle_open("/nonexistent/x.apbundle", &b, err,
				 sizeof err), -ENOENT);
	CHECK_STR_CONTAINS(err, "cannot open");
}

/* ---- aprender layout ---------------------------------------------------- */

struct entry {
	const char *name;
	size_t name_len;
	uint64_t size, offset;
};

static struct buf aprender_manifest(const struct entry *e, size_t n)
{
	struct buf m = {0};

	put_u32(&m, 1);
	put_u64(&m, 1700000000);
	put_u32(&m, 5);
	put_str(&m, "hello");
	put_u32(&m, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		size_t len = e[i].name_len ? e[i].name_len : strlen(e[i].name);

		put_u32(&m, (uint32_t)len);
		put(&m, e[i].name, len);
		put_u64(&m, e[i].size);
		put_u64(&m, e[i].offset);
	}
	return m;
}

/* Header + the given manifest bytes; data to be appended by the caller. */
static struct buf aprender_file(const struct buf *manifest)
{
	struct buf b = {0};

	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u64(&b, manifest->len);
	put(&b, manifest->p, manifest->len);
	return b;
}

static void expect_aprender_error(const struct entry *e, size_t n,
				  size_t data_len, const char *needle)
{
	struct buf m = aprender_manifest(e, n);
	struct buf b = aprender_file(&m);

	pad_to(&b, b.len + data_len);
	free(m.p);
	expect_error(&b, needle);
}

static void aprender_layout_round_trip(void)
{
	const struct entry e[] = {{"zeta", 0, 3, 0}, {"alpha/x", 0, 5, 3}};
	struct buf m = aprender_manifest(e, 2);
	struct buf b = aprender_file(&m);
	uint64_t data = 20 + m.len;
	struct apb_bundle *bundle;
	const struct apb_model *mod;
	char out[16];

	put_str(&b, "abchello");
	CHECK_EQ(open_buf(&b, &bundle), 0);
	CHECK_EQ(apb_bundle_layout(bundle), APB_LAYOUT_APRENDER);
	CHECK_EQ(apb_bundle_count(bundle), 2);
	mod = apb_bundle_model(bundle, 0);
	CHECK(strcmp(mod->name, "alpha/x") == 0);
	CHECK_EQ(mod->size, 5);
	CHECK_EQ(mod->offset, data + 3);
	CHECK(!mod->has_checksum);
	mod = apb_bundle_model(bundle, 1);
	CHECK(strcmp(mod->name, "zeta") == 0);
	CHECK_EQ(mod->offset, data);
	CHECK_EQ(apb_bundle_read(bundle, 0, 0, out, sizeof out), 5);
	CHECK(memcmp(out, "hello", 5) == 0);
	CHECK_EQ(apb_bundle_read(bundle, 1, 1, out, sizeof out), 2);
	CHECK(memcmp(out, "bc", 2) == 0);
	{
		char x[2] = "", y[8] = "";
		struct iovec iov[2] = { { x, 2 }, { y, 8 } };

		CHECK_EQ(apb_bundle_preadv(bundle, 0, 1, iov, 2, NULL), 4);
		CHECK(memcmp(x, "el", 2) == 0 && memcmp(y, "lo", 2) == 0);
	}
	apb_bundle_close(bundle);
	free(m.p);
	free(b.p);
}

/* ---- header errors ------------------------------------------------------ */

static void rejects_file_shorter_than_header(void)
{
	struct buf b = {0};

	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	expect_error(&b, "file is 12 bytes, shorter than the 16-byte header");
}

static void rejects_bad_magic(void)
{
	struct buf b = v1_file("{}", 0);

	b.p[7] = 'X';
	expect_error(&b, "not an apbundle file (bad magic)");
}

static void rejects_unsupported_version(void)
{
	struct buf b = v1_file("{}", 0);

	b.p[8] = 7;
	expect_error(&b, "unsupported format version 7 (this apbundlefs reads 1 and 2)");
}

static void rejects_manifest_that_does_not_begin_with_brace(void)
{
	expect_v1_error(" {'model_count':0,'models':[]}", 0,
			"manifest must begin with '{' (found byte 0x20 at offset 16)");
	expect_v1_error("[1,2,3]", 0, "manifest must begin with '{'");
}

/* ---- version 1 manifest errors ------------------------------------------ */

static void rejects_zero_manifest_length(void)
{
	struct buf b = {0};

	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, 0);
	expect_error(&b, "manifest length is 0");

	b = (struct buf){0};
	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, 0);
	put_str(&b, "{}");
	expect_error(&b, "manifest length is 0");
}

static void rejects_manifest_longer_than_limit(void)
{
	struct buf b = v1_file("{}", 0);

	b.p[12] = 1;
	b.p[15] = 0x10; /* 0x10000001 */
	expect_error(&b, "manifest length 268435457 exceeds the limit of 268435456 bytes");
}

static void rejects_manifest_past_end_of_file(void)
{
	struct buf b = v1_file("{'model_count':0,'models':[]}", 0);

	b.p[12] = 200;
	expect_error(&b, "manifest (200 bytes at offset 16) runs past end of file (45 bytes)");
}

static void rejects_json_syntax_error_with_position(void)
{
	/* The position is cJSON's: where it found the token it could not use. */
	expect_v1_error("{'model_count':1 'models':[]}", 0,
			"manifest is not valid JSON: syntax error at byte 17 of the manifest (near '\"models\":[]}')");
}

static void rejects_truncated_json(void)
{
	expect_v1_error("{'model_count':1", 0,
			"manifest is not valid JSON: syntax error at byte 15");
}

static void rejects_bytes_after_the_json_value(void)
{
	expect_v1_error("{'model_count':0,'models':[]} x", 0,
			"manifest has unexpected bytes after the JSON value at byte 30");
}

static void rejects_duplicate_top_level_key(void)
{
	expect_v1_error("{'model_count':0,'models':[],'models':[]}", 0,
			"manifest: key 'models' appears twice");
}

static void rejects_missing_model_count(void)
{
	expect_v1_error("{'models':[]}", 0, "manifest: 'model_count' is missing");
}

static void rejects_non_numeric_model_count(void)
{
	expect_v1_error("{'model_count':'1','models':[]}", 0,
			"manifest: 'model_count' is not a number");
}

static void rejects_negative_model_count(void)
{
	expect_v1_error("{'model_count':-1,'models':[]}", 0,
			"manifest: 'model_count' -1 is negative");
}

static void rejects_fractional_model_count(void)
{
	expect_v1_error("{'model_count':1.5,'models':[]}", 0,
			"manifest: 'model_count' 1.5 is not an exact integer");
}

static void rejects_model_count_above_limit(void)
{
	expect_v1_error("{'model_count':2000000,'models':[]}", 0,
			"manifest: 'model_count' 2000000 exceeds the limit of 1048576");
}

static void rejects_missing_models(void)
{
	expect_v1_error("{'model_count':0}", 0, "manifest: 'models' is missing");
}

static void rejects_models_that_is_not_an_array(void)
{
	expect_v1_error("{'model_count':0,'models':{}}", 0,
			"manifest: 'models' is not an array");
}

static void rejects_model_count_not_matching_models(void)
{
	expect_v1_error("{'model_count':2,'models':[{'name':'m','offset':4096,'size':0," OK_CHECKSUM "}]}",
			4096, "manifest: 'model_count' is 2 but 'models' has 1 entries");
}

static void rejects_model_that_is_not_an_object(void)
{
	expect_v1_error("{'model_count':1,'models':[42]}", 0,
			"models[0] is not a JSON object");
}

static void rejects_model_without_name(void)
{
	expect_v1_error(ONE_MODEL("'offset':4096,'size':1," OK_CHECKSUM), 8192,
			"models[0]: 'name' is missing");
}

static void rejects_model_name_that_is_not_a_string(void)
{
	expect_v1_error(ONE_MODEL("'name':7,'offset':4096,'size':1," OK_CHECKSUM),
			8192, "models[0]: 'name' is not a string");
}

static void rejects_invalid_model_name(void)
{
	expect_v1_error(ONE_MODEL("'name':'a/../b','offset':4096,'size':1," OK_CHECKSUM),
			8192, "name 'a/../b': component '..' is not allowed");
}

static void rejects_duplicate_key_in_model(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'offset':8192,'size':1," OK_CHECKSUM),
			8192, "models[0]: key 'offset' appears twice");
}

/* cJSON would cut "a\u0000b" to the name "a". */
static void rejects_escaped_nul_in_manifest(void)
{
	expect_v1_error(ONE_MODEL("'name':'a\\u0000b','offset':4096,'size':1," OK_CHECKSUM),
			8192,
			"manifest contains an escaped NUL (\\u0000) at byte 37");
}

static void accepts_escaped_backslash_before_u0000(void)
{
	struct buf b = v1_file(ONE_MODEL("'name':'m','offset':4096,'size':1,'note':'\\\\u0000'," OK_CHECKSUM), 8192);
	struct apb_bundle *bundle;

	CHECK_EQ(open_buf(&b, &bundle), 0);
	apb_bundle_close(bundle);
	free(b.p);
}

/* A raw NUL byte inside a string cut the name "a<NUL>b" to "a" before the
 * reader checked strings itself. */
static void rejects_raw_nul_in_manifest(void)
{
	char *m = json(ONE_MODEL("'name':'a#b','offset':4096,'size':1," OK_CHECKSUM));
	struct buf b = {0};
	size_t len = strlen(m);

	*strchr(m, '#') = '\0';
	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, (uint32_t)len);
	put(&b, m, len);
	pad_to(&b, 8192);
	free(m);
	expect_error(&b, "manifest contains a NUL byte at byte 37; NUL is not allowed in manifest strings");
}

/* APB_JSON_DEPTH_MAX levels (the top-level object and 999 arrays) are
 * read; one more is refused by name, not as a syntax error. */
static void json_nesting_is_limited_with_its_own_message(void)
{
	const char *head = "{'model_count':0,'models':[],'x':";
	char *text = malloc(strlen(head) + 2 * 1000 + 2), needle[128];

	for (int levels = 999; levels <= 1000; levels++) {
		struct apb_bundle *bundle;
		struct buf b;
		size_t n = strlen(head);

		memcpy(text, head, n);
		memset(text + n, '[', (size_t)levels);
		memset(text + n + levels, ']', (size_t)levels);
		strcpy(text + n + 2 * levels, "}");
		b = v1_file(text, 8192);
		if (levels == 999) {
			CHECK_EQ(open_buf(&b, &bundle), 0);
			apb_bundle_close(bundle);
			free(b.p);
			continue;
		}
		snprintf(needle, sizeof needle,
			 "manifest is not valid JSON: nested too deeply at byte %zu of the manifest (limit 1000)",
			 n + 999);
		expect_error(&b, needle);
	}
	free(text);
}

/* Escapes decode in names and in keys; strings that hold brackets and
 * unknown values of every kind are skipped whole. */
static void json_escapes_and_unknown_values_are_read(void)
{
	struct buf b = v1_file(
		"{'model_count':1,'note':{'a':']}[{\\\\\\'','b':[1,2.5e3,-0,true,false,null,{}]},"
		"'models':[{'n\\u0061me':'d\\u00e9j\\u00e0\\/\\ud83d\\ude00.bin','offset':4096,"
		"'size':1.0e0,'x':[]," OK_CHECKSUM "}]}",
		8192);
	struct apb_bundle *bundle;
	size_t idx;

	CHECK_EQ(open_buf(&b, &bundle), 0);
	CHECK_EQ(apb_bundle_find(bundle, "d\xc3\xa9j\xc3\xa0/\xf0\x9f\x98\x80.bin", &idx), 0);
	CHECK_EQ(apb_bundle_model(bundle, idx)->size, 1);
	apb_bundle_close(bundle);
	free(b.p);
}

/* The reader tries each member's key as the previous model spelled it
 * there, reads plain checksums and counts from the check's notes: models
 * in other orders, escaped spellings and a "models" behind nine other
 * containers must read as the general path does. */
static void keys_in_any_order_and_spelling_across_models(void)
{
	struct buf b = v1_file(
		"{'a':{},'b':[],'c':{},'d':[],'e':{},'f':[],'g':{},'h':[],'i':{},"
		"'model_count':3,'models':["
		"{'name':'m0','offset':4096,'size':1,'checksum':'xxh3-64:000000000000000a'},"
		"{'checksum':'xxh3-64:\\u0030\\u00300000000000000b','size':2,'offset':8192,'name':'m1'},"
		"{'n\\u0061me':'m2','of\\u0066set':12288,'siz\\u0065':3,'check\\u0073um':'xxh3-64:000000000000000c'}"
		"],'z':[[]]}",
		16384);
	static const char *const names[] = {"m0", "m1", "m2"};
	struct apb_bundle *bundle;
	size_t idx;

	CHECK_EQ(open_buf(&b, &bundle), 0);
	for (unsigned i = 0; i < 3; i++) {
		const struct apb_model *m;

		CHECK_EQ(apb_bundle_find(bundle, names[i], &idx), 0);
		m = apb_bundle_model(bundle, idx);
		CHECK_EQ(m->offset, 4096u * (i + 1));
		CHECK_EQ(m->size, i + 1);
		CHECK_EQ(m->xxh3, 0xau + i);
	}
	apb_bundle_close(bundle);
	free(b.p);
	expect_v1_error("{'model_count':2,'models':["
			"{'name':'m0','offset':4096,'size':1," OK_CHECKSUM "},"
			"{'name':'m1','offset':8192,'offs\\u0065t':8192,'size':1," OK_CHECKSUM "}]}",
			16384, "models[1]: key 'offset' appears twice");
	expect_v1_error("{'a':{},'b':[],'c':{},'d':[],'e':{},'f':[],'g':{},'h':[],'i':{},"
			"'model_count':2,'models':[{'name':'m0','offset':4096,'size':1," OK_CHECKSUM "}]}",
			8192, "manifest: 'model_count' is 2 but 'models' has 1 entries");
	expect_v1_error("{'model_count':0,'models':[],'x':{},'mod\\u0065ls':[]}", 0,
			"manifest: key 'models' appears twice");
}

static void rejects_json_that_is_not_rfc_8259(void)
{
	/* A lone surrogate, a leading zero, a bare word, a comma too many. */
	expect_v1_error("{'model_count':0,'models':[],'x':'\\udc00'}", 0,
			"syntax error at byte 34");
	expect_v1_error("{'model_count':00,'models':[]}", 0,
			"syntax error at byte 16");
	expect_v1_error("{'model_count':0,'models':[nul]}", 0,
			"syntax error at byte 27");
	expect_v1_error("{'model_count':0,'models':[],}", 0,
			"syntax error at byte 29");
}

static void rejects_missing_offset(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','size':1," OK_CHECKSUM), 8192,
			"model 'm': 'offset' is missing");
}

static void rejects_missing_size(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096," OK_CHECKSUM), 8192,
			"model 'm': 'size' is missing");
}

static void rejects_non_numeric_size(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':'1'," OK_CHECKSUM),
			8192, "model 'm': 'size' is not a number");
}

static void rejects_negative_offset(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':-4096,'size':1," OK_CHECKSUM),
			8192, "model 'm': 'offset' -4096 is negative");
}

static void rejects_fractional_size(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':10.5," OK_CHECKSUM),
			8192, "model 'm': 'size' 10.5 is not an exact integer");
}

static void rejects_offset_above_exact_integer_range(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':9007199254740992,'size':1," OK_CHECKSUM),
			8192,
			"model 'm': 'offset' 9007199254740992 is not an exact integer (above 2^53-1)");
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':1e300," OK_CHECKSUM),
			8192, "model 'm': 'size' 1e+300 is not an exact integer (above 2^53-1)");
}

static void rejects_missing_checksum(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':1"), 8192,
			"model 'm': 'checksum' is missing");
}

static void rejects_checksum_that_is_not_a_string(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':1,'checksum':5"),
			8192, "model 'm': 'checksum' is not a string");
}

static void rejects_malformed_checksum(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':1,'checksum':'xxh3-64:0123456789ABCDEF'"),
			8192,
			"model 'm': checksum 'xxh3-64:0123456789ABCDEF' is not \"xxh3-64:\" followed by 16 lower-case hex digits");
	expect_v1_error(ONE_MODEL("'name':'m','offset':4096,'size':1,'checksum':'sha256:00'"),
			8192, "model 'm': checksum 'sha256:00' is not");
}

static void rejects_unaligned_offset(void)
{
	expect_v1_error(ONE_MODEL("'name':'m','offset':4100,'size':1," OK_CHECKSUM),
			8192, "model 'm': offset 4100 is not a multiple of 4096");
}

static void rejects_offset_inside_header_and_manifest(void)
{
	/* The manifest is 99 bytes, so data may start at 115 at the earliest. */
	expect_v1_error(ONE_MODEL("'name':'m','offset':0,'size':1," OK_CHECKSUM),
			8192,
			"model 'm': offset 0 is inside the header and manifest (which end at 115)");
}

static void rejects_model_past_end_of_file(void)
{
	expect_v1_error(ONE_MODEL("'name':'enc','offset':8192,'size':4096," OK_CHECKSUM),
			10000,
			"model 'enc': offset 8192 + size 4096 runs past end of file (10000 bytes)");
}

static void rejects_duplicate_names(void)
{
	expect_v1_error("{'model_count':2,'models':["
			"{'name':'m','offset':4096,'size':1," OK_CHECKSUM "},"
			"{'name':'m','offset':8192,'size':1," OK_CHECKSUM "}]}",
			12288, "duplicate name 'm'");
}

static void rejects_name_that_is_file_and_directory(void)
{
	expect_v1_error("{'model_count':3,'models':["
			"{'name':'a/b/c','offset':4096,'size':1," OK_CHECKSUM "},"
			"{'name':'a-b','offset':8192,'size':1," OK_CHECKSUM "},"
			"{'name':'a','offset':12288,'size':1," OK_CHECKSUM "}]}",
			16384,
			"names 'a' and 'a/b/c': 'a' is both a file and a directory");
}

static void rejects_overlapping_models(void)
{
	expect_v1_error("{'model_count':2,'models':["
			"{'name':'b','offset':8192,'size':10," OK_CHECKSUM "},"
			"{'name':'a','offset':4096,'size':8192," OK_CHECKSUM "}]}",
			16384,
			"models 'a' and 'b' overlap: 'a' covers bytes 4096 to 12288, 'b' starts at 8192");
}

/* A long model overlapping one that is not its neighbour in offset order. */
static void rejects_overlap_beyond_the_next_model(void)
{
	expect_v1_error("{'model_count':3,'models':["
			"{'name':'big','offset':4096,'size':16384," OK_CHECKSUM "},"
			"{'name':'empty','offset':8192,'size':0," OK_CHECKSUM "},"
			"{'name':'late','offset':16384,'size':10," OK_CHECKSUM "}]}",
			20480,
			"models 'big' and 'late' overlap: 'big' covers bytes 4096 to 20480, 'late' starts at 16384");
}

/* ---- aprender layout errors --------------------------------------------- */

static void rejects_aprender_file_shorter_than_its_header(void)
{
	struct buf b = {0};

	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, 10);
	put_u32(&b, 0); /* 20 bytes with the next line */
	b.len = 18;
	expect_error(&b, "file is 18 bytes, shorter than the 20-byte header of the aprender layout");
}

static void rejects_aprender_zero_manifest_length(void)
{
	struct buf m = {0};
	struct buf b = aprender_file(&m);

	pad_to(&b, 100);
	expect_error(&b, "manifest length is 0");
}

static void rejects_aprender_manifest_past_end_of_file(void)
{
	struct buf m = aprender_manifest(NULL, 0);
	struct buf b = aprender_file(&m);

	b.len -= 1;
	free(m.p);
	expect_error(&b, "manifest (25 bytes at offset 20) runs past end of file (44 bytes)");
}

static void rejects_aprender_truncated_preamble(void)
{
	struct buf m = {0};
	struct buf b;

	put_u32(&m, 1);
	put_u32(&m, 0); /* created_at needs 8 bytes */
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest ends early: created_at needs 8 bytes at manifest byte 4, only 4 left");
}

static void rejects_aprender_description_past_manifest(void)
{
	struct buf m = {0};
	struct buf b;

	put_u32(&m, 1);
	put_u64(&m, 0);
	put_u32(&m, 1000);
	put_str(&m, "short");
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest ends early: the description needs 1000 bytes at manifest byte 16, only 5 left");
}

static void rejects_aprender_model_count_above_limit(void)
{
	struct buf m = aprender_manifest(NULL, 0);
	struct buf b;

	m.p[m.len - 2] = 0x20; /* count = 0x200000 */
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest: model count 2097152 exceeds the limit of 1048576");
}

static void rejects_aprender_model_count_that_cannot_fit(void)
{
	struct buf m = aprender_manifest(NULL, 0);
	struct buf b;

	m.p[m.len - 4] = 3;
	put_u64(&m, 0);
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest: 3 models cannot fit in the 8 bytes left");
}

static void rejects_aprender_name_past_manifest(void)
{
	struct buf m = aprender_manifest(NULL, 0);
	struct buf b;

	m.p[m.len - 4] = 1;
	put_u32(&m, 100); /* name length */
	put_u64(&m, 0);
	put_u64(&m, 0);
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest ends early: model 0 name needs 100 bytes at manifest byte 29, only 16 left");
}

static void rejects_aprender_truncated_entry(void)
{
	struct buf m = aprender_manifest(NULL, 0);
	struct buf b;

	m.p[m.len - 4] = 1;
	put_u32(&m, 8);
	put_str(&m, "abcdefgh");
	put_u64(&m, 1); /* size; the offset is missing */
	b = aprender_file(&m);
	free(m.p);
	expect_error(&b, "aprender manifest ends early: model 0 offset needs 8 bytes at manifest byte 45, only 0 left");
}

static void rejects_aprender_invalid_name(void)
{
	const struct entry e[] = {{"a\0b", 3, 1, 0}};

	expect_aprender_error(e, 1, 1, "name 'a\\x00b': contains a NUL byte at byte 1");
}

static void rejects_aprender_trailing_manifest_bytes(void)
{
	const struct entry e[] = {{"m", 0, 1, 0}};
	struct buf m = aprender_manifest(e, 1);
	struct buf b;

	put_u32(&m, 0);
	b = aprender_file(&m);
	pad_to(&b, b.len + 1);
	free(m.p);
	expect_error(&b, "4 trailing bytes after the last model entry in the manifest");
}

static void rejects_aprender_relative_offset_overflow(void)
{
	const struct entry e[] = {{"m", 0, 1, UINT64_MAX}};

	expect_aprender_error(e, 1, 1, "model 'm': offset 18446744073709551615 (relative to the data start 66) overflows");
}

static void rejects_aprender_offset_plus_size_overflow(void)
{
	const struct entry e[] = {{"m", 0, UINT64_MAX, 0}};

	expect_aprender_error(e, 1, 1, "model 'm': offset 66 + size 18446744073709551615 overflows");
}

static void rejects_aprender_model_past_end_of_file(void)
{
	const struct entry e[] = {{"m", 0, 10, 5}};

	expect_aprender_error(e, 1, 14, "model 'm': offset 71 + size 10 runs past end of file (80 bytes)");
}

static void rejects_aprender_overlapping_models(void)
{
	const struct entry e[] = {{"p", 0, 10, 0}, {"q", 0, 10, 9}};

	expect_aprender_error(e, 2, 19, "models 'p' and 'q' overlap");
}

static void rejects_aprender_duplicate_names(void)
{
	const struct entry e[] = {{"p", 0, 1, 0}, {"p", 0, 1, 1}};

	expect_aprender_error(e, 2, 2, "duplicate name 'p'");
}

/* ---- scale --------------------------------------------------------------- */

enum { MANY = 100000 };

/*
 * MANY models listed in reverse name order, spread over 97 directories,
 * one byte each, 4096 apart from first. Offsets are printed at a fixed
 * width (JSON allows the leading spaces) so the manifest's length, and so
 * first, does not depend on them.
 */
static struct buf many_models_manifest(uint64_t first)
{
	struct buf m = {0};
	char line[160];

	put_str(&m, "{\"model_count\":100000,\"models\":[");
	for (size_t i = 0; i < MANY; i++) {
		size_t k = MANY - 1 - i;

		snprintf(line, sizeof line,
			 "%s{\"name\":\"dir%02zu/model%06zu.bin\",\"offset\":%16llu,\"size\":1,\"checksum\":\"xxh3-64:%016llx\"}",
			 i ? "," : "", k % 97, k,
			 (unsigned long long)(first + 4096 * (uint64_t)k),
			 (unsigned long long)k);
		put_str(&m, line);
	}
	put_str(&m, "]}");
	return m;
}

static void opens_a_manifest_of_100000_models(void)
{
	struct buf man = many_models_manifest(0), b = {0};
	uint64_t first = (16 + man.len + 4095) / 4096 * 4096;
	struct apb_bundle *bundle;
	struct timespec t0, t1;
	size_t i;
	int fd;

	free(man.p);
	man = many_models_manifest(first);
	put_str(&b, "APBUNDLE");
	put_u32(&b, 1);
	put_u32(&b, (uint32_t)man.len);
	put(&b, man.p, man.len);
	free(man.p);
	fd = write_temp(&b);
	/* Sparse: the models' bytes are holes. */
	CHECK_EQ(ftruncate(fd, (off_t)(first + 4096 * (uint64_t)MANY)), 0);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_EQ(apb_bundle_open(path, &bundle, err, sizeof err), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	unlink(path);
	close(fd);
	printf("# opened %d models in %.1f ms\n", MANY,
	       (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
		       (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);

	CHECK_EQ(apb_bundle_count(bundle), MANY);
	CHECK(strcmp(apb_bundle_model(bundle, 0)->name,
		     "dir00/model000000.bin") == 0);
	CHECK_EQ(apb_bundle_find(bundle, "dir05/model099999.bin", &i), -ENOENT);
	CHECK_EQ(apb_bundle_find(bundle, "dir89/model099999.bin", &i), 0);
	CHECK_EQ(apb_bundle_model(bundle, i)->offset, first + 4096ull * 99999);
	CHECK_EQ(apb_bundle_model(bundle, i)->xxh3, 99999);
	apb_bundle_close(bundle);
	free(b.p);
}

int main(void)
{
	RUN(v1_models_are_sorted_by_name_with_sizes_offsets_checksums);
	RUN(find_returns_index_in_name_order);
	RUN(read_returns_model_bytes_at_any_offset);
	RUN(read_is_short_at_end_and_zero_at_or_past_it);
	RUN(read_of_truncated_backing_file_is_eio);
	RUN(readv_scatters_model_bytes_in_order);
	RUN(readv_takes_more_iovecs_than_one_batch);
	RUN(empty_models_may_share_an_offset);
	RUN(bundle_with_no_models_opens);
	RUN(missing_file_reports_open_errno);
	RUN(aprender_layout_round_trip);

	RUN(rejects_file_shorter_than_header);
	RUN(rejects_bad_magic);
	RUN(rejects_unsupported_version);
	RUN(rejects_manifest_that_does_not_begin_with_brace);

	RUN(rejects_zero_manifest_length);
	RUN(rejects_manifest_longer_than_limit);
	RUN(rejects_manifest_past_end_of_file);
	RUN(rejects_json_syntax_error_with_position);
	RUN(rejects_truncated_json);
	RUN(rejects_bytes_after_the_json_value);
	RUN(rejects_duplicate_top_level_key);
	RUN(rejects_missing_model_count);
	RUN(rejects_non_numeric_model_count);
	RUN(rejects_negative_model_count);
	RUN(rejects_fractional_model_count);
	RUN(rejects_model_count_above_limit);
	RUN(rejects_missing_models);
	RUN(rejects_models_that_is_not_an_array);
	RUN(rejects_model_count_not_matching_models);
	RUN(rejects_model_that_is_not_an_object);
	RUN(rejects_model_without_name);
	RUN(rejects_model_name_that_is_not_a_string);
	RUN(rejects_invalid_model_name);
	RUN(rejects_duplicate_key_in_model);
	RUN(rejects_escaped_nul_in_manifest);
	RUN(accepts_escaped_backslash_before_u0000);
	RUN(rejects_raw_nul_in_manifest);
	RUN(json_nesting_is_limited_with_its_own_message);
	RUN(json_escapes_and_unknown_values_are_read);
	RUN(keys_in_any_order_and_spelling_across_models);
	RUN(rejects_json_that_is_not_rfc_8259);
	RUN(rejects_missing_offset);
	RUN(rejects_missing_size);
	RUN(rejects_non_numeric_size);
	RUN(rejects_negative_offset);
	RUN(rejects_fractional_size);
	RUN(rejects_offset_above_exact_integer_range);
	RUN(rejects_missing_checksum);
	RUN(rejects_checksum_that_is_not_a_string);
	RUN(rejects_malformed_checksum);
	RUN(rejects_unaligned_offset);
	RUN(rejects_offset_inside_header_and_manifest);
	RUN(rejects_model_past_end_of_file);
	RUN(rejects_duplicate_names);
	RUN(rejects_name_that_is_file_and_directory);
	RUN(rejects_overlapping_models);
	RUN(rejects_overlap_beyond_the_next_model);

	RUN(rejects_aprender_file_shorter_than_its_header);
	RUN(rejects_aprender_zero_manifest_length);
	RUN(rejects_aprender_manifest_past_end_of_file);
	RUN(rejects_aprender_truncated_preamble);
	RUN(rejects_aprender_description_past_manifest);
	RUN(rejects_aprender_model_count_above_limit);
	RUN(rejects_aprender_model_count_that_cannot_fit);
	RUN(rejects_aprender_name_past_manifest);
	RUN(rejects_aprender_truncated_entry);
	RUN(rejects_aprender_invalid_name);
	RUN(rejects_aprender_trailing_manifest_bytes);
	RUN(rejects_aprender_relative_offset_overflow);
	RUN(rejects_aprender_offset_plus_size_overflow);
	RUN(rejects_aprender_model_past_end_of_file);
	RUN(rejects_aprender_overlapping_models);
	RUN(rejects_aprender_duplicate_names);

	RUN(opens_a_manifest_of_100000_models);
	return 0;
}
