/*
 * test_v2.c - format version 2 (docs/FORMAT.md): the block table, its
 * rules, and verified reads through apb_bundle_preadv().
 *
 * struct v2 describes a bundle as fields a test may change before
 * v2_bytes() lays it out: models (data, compression, block size), the
 * table entries the layout computed, the manifest numbers, and JSON text
 * overrides. Round trips compare every byte read with the source; every
 * rule has a test asserting -EINVAL and the distinctive part of its
 * message; corrupt blocks must give -EBADMSG and their index. The stage
 * plan (what one read of a remote source covers) is checked on crafted
 * tables, its rules and the scratch bound on random ones.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "../../core/format.h"
#include "apbundle/bundle.h"
#include "buf.h"
#include "test.h"

#define MAXM 4
#define MAXE 256

struct v2_entry {
	uint64_t off;
	uint32_t len, flags;
	uint64_t xxh3;
};

struct v2 {
	size_t n;
	const char *name[MAXM];
	uint8_t *data[MAXM];
	size_t size[MAXM];
	const char *comp[MAXM]; /* "none", "zstd", or anything to test */
	uint64_t cs[MAXM];
	/* Filled by v2_layout(), then free to change: */
	uint64_t off[MAXM], stored[MAXM], first[MAXM];
	struct v2_entry e[MAXE];
	uint8_t *blob[MAXE]; /* stored bytes of each entry, at e[i].off */
	size_t ne;
	uint64_t table_off, table_count;
	const char *model_json[MAXM]; /* replaces a model's object */
	const char *table_json;       /* replaces the chunk_table object;
				       * "" leaves it out */
	const char *table_sum;        /* replaces its checksum */
	uint64_t file_size;           /* 0: just past the table */
	const char *top_comp;         /* the top level's "compression" */
	uint64_t top_cs;              /* the top level's "chunk_size" */
	bool compact;                 /* models leave out keys equal to
				       * their defaults, as the writer does */
};

static uint64_t align_up(uint64_t n, uint64_t a)
{
	return (n + a - 1) / a * a;
}

/* Entry i's bytes are not written (its length is being lied about). */
static void drop_blob(struct v2 *v, size_t i)
{
	free(v->blob[i]);
	v->blob[i] = NULL;
}

/* Add a model; data is copied. */
static void v2_add(struct v2 *v, const char *name, const uint8_t *data,
		   size_t size, const char *comp, uint64_t cs)
{
	size_t i = v->n++;

	CHECK(i < MAXM);
	v->name[i] = name;
	v->data[i] = malloc(size ? size : 1);
	CHECK(v->data[i] != NULL);
	if (size)
		memcpy(v->data[i], data, size);
	v->size[i] = size;
	v->comp[i] = comp;
	v->cs[i] = cs;
}

/* Place models from 4096 on, in the order added: raw blocks aligned, zstd
 * frames wherever they fall; the table after the data. */
static void v2_layout(struct v2 *v)
{
	uint64_t pos = 4096;

	for (size_t i = 0; i < v->n; i++) {
		uint64_t cs = v->cs[i], start = 0;
		bool have = false;

		v->first[i] = v->ne;
		for (uint64_t at = 0; at < v->size[i]; at += cs) {
			size_t ulen = v->size[i] - at < cs ? v->size[i] - at : cs;
			struct v2_entry *e = &v->e[v->ne];
			size_t cap = ZSTD_compressBound(ulen), zl = 0;
			uint8_t *z = NULL;

			CHECK(v->ne < MAXE);
			if (strcmp(v->comp[i], "zstd") == 0) {
				z = malloc(cap);
				zl = ZSTD_compress(z, cap, v->data[i] + at, ulen, 3);
				CHECK(!ZSTD_isError(zl));
			}
			if (z && zl < ulen) {
				e->flags = 1;
				e->len = (uint32_t)zl;
				v->blob[v->ne] = z;
			} else {
				free(z);
				pos = align_up(pos, 4096);
				e->flags = 0;
				e->len = (uint32_t)ulen;
				v->blob[v->ne] = malloc(ulen);
				memcpy(v->blob[v->ne], v->data[i] + at, ulen);
			}
			e->off = pos;
			e->xxh3 = XXH3_64bits(v->data[i] + at, ulen);
			if (!have)
				start = pos;
			have = true;
			pos += e->len;
			v->ne++;
		}
		if (!have)
			start = pos = align_up(pos, 4096);
		v->off[i] = start;
		v->stored[i] = pos - start;
		pos = align_up(pos, 4096);
	}
	v->table_off = align_up(pos, 8);
	v->table_count = v->ne;
}

static struct buf v2_table(const struct v2 *v)
{
	struct buf t = {0};

	for (size_t i = 0; i < v->ne; i++) {
		put_u64(&t, v->e[i].off);
		put_u32(&t, v->e[i].len);
		put_u32(&t, v->e[i].flags);
		put_u64(&t, v->e[i].xxh3);
	}
	return t;
}

/* Model i's object as v->compact says: every key, or those that differ
 * from their defaults (docs/FORMAT.md) given next, the entry after the
 * previous model's blocks. */
static size_t v2_model_json(const struct v2 *v, size_t i, uint64_t next,
			    char *out, size_t cap)
{
	const char *comp = v->top_comp ? v->top_comp : "none";
	uint64_t cs = v->top_cs ? v->top_cs : 65536;
	size_t o = 0;

	/* The extent of the model's blocks, the defaults of offset and
	 * stored_size; an empty model has none (so no offset is left out). */
	bool blocks = v->cs[i] && v->size[i] && v->first[i] < v->ne;
	const struct v2_entry *e = blocks ? &v->e[v->first[i]] : NULL;
	const struct v2_entry *last =
		blocks && v->first[i] + (v->size[i] - 1) / v->cs[i] < v->ne
			? &v->e[v->first[i] + (v->size[i] - 1) / v->cs[i]]
			: NULL;

	o += snprintf(out + o, cap - o,
		      "{'name':'%s','size':%zu,'checksum':'xxh3-64:%016llx'",
		      v->name[i], v->size[i],
		      (unsigned long long)XXH3_64bits(v->data[i], v->size[i]));
	if (!v->compact || !e || v->off[i] != e->off)
		o += snprintf(out + o, cap - o, ",'offset':%llu",
			      (unsigned long long)v->off[i]);
	if (!v->compact ||
	    (last ? v->stored[i] != last->off + last->len - v->off[i]
		  : v->stored[i] != 0))
		o += snprintf(out + o, cap - o, ",'stored_size':%llu",
			      (unsigned long long)v->stored[i]);
	if (!v->compact || strcmp(v->comp[i], comp) != 0)
		o += snprintf(out + o, cap - o, ",'compression':'%s'",
			      v->comp[i]);
	if (!v->compact || v->cs[i] != cs)
		o += snprintf(out + o, cap - o, ",'chunk_size':%llu",
			      (unsigned long long)v->cs[i]);
	if (!v->compact || v->first[i] != next)
		o += snprintf(out + o, cap - o, ",'first_chunk':%llu",
			      (unsigned long long)v->first[i]);
	o += snprintf(out + o, cap - o, "}");
	return o;
}

static struct buf v2_bytes(const struct v2 *v)
{
	struct buf b = {0}, t = v2_table(v);
	char man[8192], sum[40];
	size_t o = 0;
	uint64_t next = 0;
	char *m;

	snprintf(sum, sizeof sum, "xxh3-64:%016llx",
		 (unsigned long long)XXH3_64bits(t.p, t.len));
	o += snprintf(man + o, sizeof man - o, "{'model_count':%zu,", v->n);
	if (v->top_comp)
		o += snprintf(man + o, sizeof man - o, "'compression':'%s',",
			      v->top_comp);
	if (v->top_cs)
		o += snprintf(man + o, sizeof man - o, "'chunk_size':%llu,",
			      (unsigned long long)v->top_cs);
	if (v->table_json && *v->table_json)
		o += snprintf(man + o, sizeof man - o, "'chunk_table':%s,",
			      v->table_json);
	else if (v->table_json) /* "": none */
		;
	else
		o += snprintf(man + o, sizeof man - o,
			      "'chunk_table':{'offset':%llu,'count':%llu,'checksum':'%s'},",
			      (unsigned long long)v->table_off,
			      (unsigned long long)v->table_count,
			      v->table_sum ? v->table_sum : sum);
	o += snprintf(man + o, sizeof man - o, "'models':[");
	for (size_t i = 0; i < v->n; i++) {
		if (i)
			o += snprintf(man + o, sizeof man - o, ",");
		if (v->model_json[i])
			o += snprintf(man + o, sizeof man - o, "%s",
				      v->model_json[i]);
		else
			o += v2_model_json(v, i, next, man + o, sizeof man - o);
		if (v->cs[i]) /* 0 in a test of that rule */
			next = v->first[i] +
			       (v->size[i] + v->cs[i] - 1) / v->cs[i];
	}
	o += snprintf(man + o, sizeof man - o, "]}   ");
	CHECK(o < sizeof man);
	m = json(man);
	CHECK(16 + strlen(m) <= 4096);
	put_str(&b, "APBUNDLE");
	put_u32(&b, 2);
	put_u32(&b, (uint32_t)strlen(m));
	put_str(&b, m);
	for (size_t i = 0; i < v->ne; i++)
		if (v->blob[i])
			put_at(&b, v->e[i].off, v->blob[i], v->e[i].len);
	put_at(&b, v->table_off, t.p, t.len);
	if (v->file_size)
		b.len = v->file_size < b.len ? v->file_size : b.len;
	pad_to(&b, v->file_size);
	free(m);
	free(t.p);
	return b;
}

static void v2_free(struct v2 *v)
{
	for (size_t i = 0; i < v->n; i++)
		free(v->data[i]);
	for (size_t i = 0; i < v->ne; i++)
		free(v->blob[i]);
}

static void pattern(uint8_t *d, size_t n, unsigned seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		d[i] = (uint8_t)x;
	}
}

/* Compressible: runs of a few byte values. */
static void text(uint8_t *d, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		d[i] = (uint8_t)("abcdefgh"[(i / 7 + seed) % 8]);
}

/* A valid two-model bundle most rule tests start from: "a" zstd (blocks
 * compressed), "b" none, both 3 blocks of 4096 + 100 bytes. */
static void base(struct v2 *v)
{
	static uint8_t a[3 * 4096 + 100], b[3 * 4096 + 100];

	memset(v, 0, sizeof *v);
	text(a, sizeof a, 1);
	pattern(b, sizeof b, 2);
	v2_add(v, "a", a, sizeof a, "zstd", 4096);
	v2_add(v, "b", b, sizeof b, "none", 4096);
	v2_layout(v);
}

static void expect_v2_error(struct v2 *v, const char *needle)
{
	struct buf b = v2_bytes(v);

	expect_error(&b, needle);
	v2_free(v);
}

/* The same with the message's numbers, taken from v, filled in. */
__attribute__((format(printf, 2, 3))) static void
expect_v2_errorf(struct v2 *v, const char *fmt, ...)
{
	char needle[512];
	va_list ap;

	va_start(ap, fmt);
	CHECK(vsnprintf(needle, sizeof needle, fmt, ap) < (int)sizeof needle);
	va_end(ap);
	expect_v2_error(v, needle);
}

/* ---- round trips ------------------------------------------------------- */

/* Every byte of every model, read at odd offsets and lengths, and
 * scattered over odd iovecs, is the source's. */
static void check_all_reads(struct apb_bundle *b, const struct v2 *v)
{
	static uint8_t out[1 << 20], sc[1 << 20];

	for (size_t i = 0; i < v->n; i++) {
		size_t idx;
		const size_t steps[] = {1, 777, 4096, 5000, 65536, 200000};

		CHECK_EQ(apb_bundle_find(b, v->name[i], &idx), 0);
		CHECK(v->size[i] <= sizeof out);
		for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
			size_t step = steps[s];

			if (step == 1 && v->size[i] > 5000)
				continue;
			memset(out, 0xa5, v->size[i] + 1);
			for (size_t at = 0; at < v->size[i]; at += step)
				CHECK_EQ(apb_bundle_read(b, idx, at, out + at, step),
					 v->size[i] - at < step ? v->size[i] - at
								: step);
			CHECK(memcmp(out, v->data[i], v->size[i]) == 0);
			CHECK_EQ(apb_bundle_read(b, idx, v->size[i], out, step), 0);
		}
		/* Scattered: iovecs of 1000 bytes from offset 3. */
		if (v->size[i] > 3) {
			struct iovec iov[1100];
			int n = 0;

			for (size_t at = 0; at < v->size[i] && n < 1100; at += 1000)
				iov[n++] = (struct iovec){sc + at, 1000};
			CHECK_EQ(apb_bundle_preadv(b, idx, 3, iov, n, NULL),
				 v->size[i] - 3);
			CHECK(memcmp(sc, v->data[i] + 3, v->size[i] - 3) == 0);
		}
	}
}

static void round_trip(struct v2 *v)
{
	struct buf file = v2_bytes(v);
	struct apb_bundle *b;

	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_layout(b), APB_LAYOUT_V2);
	check_all_reads(b, v);
	apb_bundle_close(b);
	free(file.p);
	v2_free(v);
}

static void v2_exposes_compression_block_size_and_count(void)
{
	struct v2 v;
	struct buf file;
	struct apb_bundle *b;
	const struct apb_model *m;

	base(&v);
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_count(b), 2);
	m = apb_bundle_model(b, 0);
	CHECK(strcmp(m->name, "a") == 0);
	CHECK_EQ(m->compression, APB_COMPRESSION_ZSTD);
	CHECK_EQ(m->block_size, 4096);
	CHECK_EQ(m->block_count, 4);
	CHECK_EQ(m->first_block, 0);
	CHECK_EQ(m->size, 3 * 4096 + 100);
	CHECK(m->stored_size < m->size); /* it did compress */
	CHECK(m->has_checksum);
	CHECK(m->xxh3 == XXH3_64bits(v.data[0], v.size[0]));
	m = apb_bundle_model(b, 1);
	CHECK_EQ(m->compression, APB_COMPRESSION_NONE);
	CHECK_EQ(m->block_count, 4);
	CHECK_EQ(m->first_block, 4);
	CHECK_EQ(m->stored_size, m->size);
	CHECK_EQ(m->offset % 4096, 0);
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);
}

/* Sizes around block boundaries, each compression, several block sizes. */
static void v2_round_trip_at_block_boundaries(void)
{
	const uint64_t css[] = {4096, 65536, 3 * 4096};
	static uint8_t src[3 * 65536 + 5];

	for (size_t c = 0; c < sizeof css / sizeof *css; c++) {
		uint64_t cs = css[c];
		const size_t sizes[] = {0, 1, 4095, 4096, 4097, cs - 1, cs,
					cs + 1, 3 * cs + 5};

		for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
			struct v2 v = {0};

			text(src, sizes[s], (unsigned)s);
			v2_add(&v, "z/text", src, sizes[s], "zstd", cs);
			pattern(src, sizes[s], (unsigned)s);
			v2_add(&v, "z/random", src, sizes[s], "zstd", cs);
			v2_add(&v, "none", src, sizes[s], "none", cs);
			v2_layout(&v);
			round_trip(&v);
		}
	}
}

static void v2_bundle_with_no_models_opens(void)
{
	struct v2 v = {0};
	struct buf file;
	struct apb_bundle *b;

	v2_layout(&v);
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_count(b), 0);
	apb_bundle_close(b);
	free(file.p);
}

/* A run of whole raw blocks read straight into many small iovecs (the
 * daemon's 4 KiB cache slots over a 64 KiB-block model). */
static void v2_run_of_raw_blocks_into_small_iovecs(void)
{
	static uint8_t src[5 * 65536 + 7], out[5 * 65536 + 7];
	struct iovec iov[100];
	struct v2 v = {0};
	struct buf file;
	struct apb_bundle *b;
	int n = 0;

	pattern(src, sizeof src, 9);
	v2_add(&v, "m", src, sizeof src, "none", 65536);
	v2_layout(&v);
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	for (size_t at = 0; at < sizeof out; at += 4096)
		iov[n++] = (struct iovec){out + at, 4096};
	CHECK_EQ(apb_bundle_preadv(b, 0, 0, iov, n, NULL), sizeof src);
	CHECK(memcmp(out, src, sizeof src) == 0);
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);
}

/* Threads sharing one bundle share its pool of zstd contexts and scratch
 * buffers: every read must still return its own block's bytes. */
struct reader_arg {
	struct apb_bundle *b;
	const uint8_t *src;
	size_t size;
	unsigned seed;
	int bad;
};

static void *read_randomly(void *p)
{
	struct reader_arg *a = p;
	static _Thread_local uint8_t out[3 * 4096];
	unsigned x = a->seed;

	for (int i = 0; i < 1000; i++) {
		size_t off, len;

		x = x * 1103515245u + 12345u;
		off = (x >> 4) % a->size;
		len = 1 + (x >> 8) % sizeof out;
		if (len > a->size - off)
			len = a->size - off;
		if (apb_bundle_read(a->b, 0, off, out, len) != (long)len ||
		    memcmp(out, a->src + off, len) != 0)
			a->bad++;
	}
	return NULL;
}

static void v2_concurrent_reads_share_the_context_pool(void)
{
	static uint8_t src[40 * 4096 + 33];
	struct reader_arg args[12];
	pthread_t t[12];
	struct v2 v = {0};
	struct buf file;
	struct apb_bundle *b;

	text(src, sizeof src, 5);
	for (size_t i = 0; i < sizeof src; i += 4096 * 3)
		pattern(src + i, 4096, (unsigned)i); /* some blocks stay raw */
	v2_add(&v, "m", src, sizeof src, "zstd", 4096);
	v2_layout(&v);
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	for (int i = 0; i < 12; i++) {
		args[i] = (struct reader_arg){b, src, sizeof src, 77u + (unsigned)i, 0};
		CHECK_EQ(pthread_create(&t[i], NULL, read_randomly, &args[i]), 0);
	}
	for (int i = 0; i < 12; i++) {
		CHECK_EQ(pthread_join(t[i], NULL), 0);
		CHECK_EQ(args[i].bad, 0);
	}
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);
}

/* Blocks larger than the 128 KiB pieces the reader streams stored bytes
 * in: frames and raw blocks spanning several pieces, read whole, in part,
 * and across piece boundaries; a byte flipped in the last piece of a raw
 * block or of a frame still fails the read. */
#define BIG_CS (75 * 4096) /* 2.3 pieces */

static void big_blocks(struct v2 *v, uint8_t *src, size_t size)
{
	memset(v, 0, sizeof *v);
	/* Block 0: half random, half text, a frame of over 128 KiB; block 1
	 * random, raw; block 2 text; block 3 short. */
	pattern(src, size, 3);
	text(src + BIG_CS / 2, BIG_CS / 2, 4);
	text(src + 2 * BIG_CS, BIG_CS, 5);
	v2_add(v, "m", src, size, "zstd", BIG_CS);
	v2_layout(v);
	CHECK(v->e[0].flags == 1 && v->e[0].len > (128u << 10));
	CHECK(v->e[1].flags == 0 && v->e[2].flags == 1);
}

static void v2_blocks_larger_than_a_piece(void)
{
	static uint8_t src[3 * BIG_CS + 777], out[BIG_CS + 10];
	const size_t at[] = {0, 1, (128 << 10) - 1, 128 << 10, (256 << 10) + 5,
			     BIG_CS - 1};
	const size_t len[] = {1, 4096, (128 << 10) + 3};
	struct v2 v;
	struct buf file;
	struct apb_bundle *b;
	uint64_t bad = 99;

	big_blocks(&v, src, sizeof src);
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	for (size_t k = 0; k < 4; k++)
		for (size_t i = 0; i < sizeof at / sizeof *at; i++)
			for (size_t j = 0; j < sizeof len / sizeof *len; j++) {
				size_t off = k * BIG_CS + at[i], n = len[j];

				if (off >= sizeof src)
					continue;
				if (n > sizeof src - off)
					n = sizeof src - off;
				CHECK_EQ(apb_bundle_read(b, 0, off, out, len[j]), n);
				CHECK(memcmp(out, src + off, n) == 0);
			}
	apb_bundle_close(b);
	free(file.p);
	round_trip(&v);

	/* The last piece of raw block 1, of frame 0. */
	for (size_t k = 0; k < 2; k++) {
		big_blocks(&v, src, sizeof src);
		v.blob[1 - k][v.e[1 - k].len - 10] ^= 0x40;
		file = v2_bytes(&v);
		CHECK_EQ(open_buf(&file, &b), 0);
		CHECK_EQ(apb_bundle_preadv(b, 0, (1 - k) * BIG_CS + 5,
					   &(struct iovec){out, 10}, 1, &bad),
			 -EBADMSG);
		CHECK_EQ(bad, 1 - k);
		CHECK_EQ(apb_bundle_read(b, 0, 2 * BIG_CS, out, BIG_CS), BIG_CS);
		CHECK(memcmp(out, src + 2 * BIG_CS, BIG_CS) == 0);
		apb_bundle_close(b);
		free(file.p);
		v2_free(&v);
	}
}

/* ---- corrupt blocks ---------------------------------------------------- */

/* Flip one byte of the stored bytes of block k of model. */
static void flip_stored(struct v2 *v, size_t model, uint64_t k, size_t at)
{
	size_t i = v->first[model] + k;

	v->blob[i][at % v->e[i].len] ^= 0x40;
}

/* Block k of model is bad: reads of it fail with -EBADMSG and its index,
 * others succeed with the right bytes. */
static void check_bad_block(struct v2 *v, size_t model, uint64_t k)
{
	uint64_t cs = v->cs[model], bad = 99;
	struct buf file;
	struct apb_bundle *b;
	static uint8_t out[1 << 16];
	size_t idx;

	file = v2_bytes(v);
	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_find(b, v->name[model], &idx), 0);
	/* The block alone, one byte of it, and a read spanning it. */
	CHECK_EQ(apb_bundle_preadv(b, idx, k * cs,
				   &(struct iovec){out, cs}, 1, &bad), -EBADMSG);
	CHECK_EQ(bad, k);
	bad = 99;
	CHECK_EQ(apb_bundle_preadv(b, idx, k * cs + 5,
				   &(struct iovec){out, 1}, 1, &bad), -EBADMSG);
	CHECK_EQ(bad, k);
	bad = 99;
	CHECK_EQ(apb_bundle_preadv(b, idx, (k - 1) * cs,
				   &(struct iovec){out, 3 * cs}, 1, &bad), -EBADMSG);
	CHECK_EQ(bad, k);
	CHECK_EQ(apb_bundle_read(b, idx, k * cs, out, 10), -EBADMSG);
	/* Neighbours are fine. */
	CHECK_EQ(apb_bundle_read(b, idx, (k - 1) * cs, out, cs), cs);
	CHECK(memcmp(out, v->data[model] + (k - 1) * cs, cs) == 0);
	CHECK_EQ(apb_bundle_read(b, idx, (k + 1) * cs, out, 50), 50);
	CHECK(memcmp(out, v->data[model] + (k + 1) * cs, 50) == 0);
	apb_bundle_close(b);
	free(file.p);
	v2_free(v);
}

static void v2_flipped_byte_in_raw_block_is_ebadmsg(void)
{
	struct v2 v;

	base(&v);
	flip_stored(&v, 1, 2, 17);
	check_bad_block(&v, 1, 2);
}

static void v2_flipped_byte_in_zstd_frame_is_ebadmsg(void)
{
	struct v2 v;

	base(&v);
	CHECK_EQ(v.e[v.first[0] + 1].flags, 1);
	flip_stored(&v, 0, 1, 30); /* inside the compressed data */
	check_bad_block(&v, 0, 1);
	base(&v);
	flip_stored(&v, 0, 1, 4); /* frame header */
	check_bad_block(&v, 0, 1);
}

/* A frame that decodes fine to other bytes than the table's hash says. */
static void v2_frame_with_wrong_content_is_ebadmsg(void)
{
	struct v2 v;

	base(&v);
	CHECK_EQ(v.e[v.first[0] + 2].flags, 1);
	v.e[v.first[0] + 2].xxh3 ^= 1;
	check_bad_block(&v, 0, 2);
}

/* Right hash of the frame's content, but the frame holds fewer bytes than
 * the block (or has trailing bytes): -EBADMSG, not short data. */
static void v2_frame_of_wrong_length_is_ebadmsg(void)
{
	struct v2 v;
	struct buf file;
	struct apb_bundle *b;
	uint8_t out[4096];
	uint64_t bad = 99;
	struct v2_entry *e;
	size_t zl;

	base(&v);
	e = &v.e[v.first[0] + 1];
	free(v.blob[1]);
	v.blob[1] = malloc(ZSTD_compressBound(4000));
	zl = ZSTD_compress(v.blob[1], ZSTD_compressBound(4000), v.data[0] + 4096,
			   4000, 3);
	CHECK(!ZSTD_isError(zl) && zl <= e->len);
	e->len = (uint32_t)zl;
	v.stored[0] = v.e[3].off + v.e[3].len - v.off[0];
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_preadv(b, 0, 4096, &(struct iovec){out, 10}, 1, &bad),
		 -EBADMSG);
	CHECK_EQ(bad, 1);
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);

	/* Trailing bytes after a valid frame (the last; zero on disk). */
	base(&v);
	e = &v.e[v.first[0] + 3];
	e->len += 1;
	v.stored[0] += 1;
	v.blob[3] = realloc(v.blob[3], e->len);
	v.blob[3][e->len - 1] = 0;
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	CHECK_EQ(apb_bundle_preadv(b, 0, 3 * 4096, &(struct iovec){out, 10}, 1,
				   &bad), -EBADMSG);
	CHECK_EQ(bad, 3);
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);
}

static void v2_truncated_file_is_eio(void)
{
	struct v2 v;
	struct buf file;
	struct apb_bundle *b;
	uint8_t out[4096];
	int fd;

	base(&v);
	file = v2_bytes(&v);
	fd = write_temp(&file);
	CHECK_EQ(apb_bundle_open(path, &b, err, sizeof err), 0);
	CHECK_EQ(ftruncate(fd, (off_t)v.e[v.first[1] + 1].off), 0);
	CHECK_EQ(apb_bundle_read(b, 1, 0, out, 4096), 4096);
	CHECK_EQ(apb_bundle_read(b, 1, 4096, out, 4096), -EIO);
	CHECK_EQ(apb_bundle_read(b, 0, 4096 * 2, out, 4096), 4096);
	apb_bundle_close(b);
	unlink(path);
	close(fd);
	free(file.p);
	v2_free(&v);
}

/* ---- header and table rules -------------------------------------------- */

static void rejects_v2_manifest_that_does_not_begin_with_brace(void)
{
	struct v2 v;
	struct buf b;

	base(&v);
	b = v2_bytes(&v);
	b.p[16] = ' ';
	expect_error(&b, "manifest must begin with '{' (found byte 0x20 at offset 16)");
	v2_free(&v);
}

static void rejects_missing_block_table(void)
{
	struct v2 v;

	base(&v);
	v.table_json = "";
	expect_v2_error(&v, "manifest: 'chunk_table' is missing");
	base(&v);
	v.table_json = "{}";
	expect_v2_error(&v, "chunk_table: 'offset' is missing");
	base(&v);
	v.table_json = "[]";
	expect_v2_error(&v, "manifest: 'chunk_table' is not a JSON object");
}

static void rejects_block_table_count_above_limit(void)
{
	struct v2 v;

	base(&v);
	v.table_count = APB_BLOCKS_MAX + 1ull;
	expect_v2_error(&v, "chunk_table: 'count' 16777217 exceeds the limit of 16777216");
}

static void rejects_unaligned_block_table(void)
{
	struct v2 v;

	base(&v);
	v.table_json = "{'offset':4100,'count':8,'checksum':'xxh3-64:0000000000000000'}";
	expect_v2_error(&v, "chunk_table: offset 4100 is not a multiple of 8");
}

static void rejects_block_table_inside_manifest(void)
{
	struct v2 v;

	base(&v);
	v.table_json = "{'offset':16,'count':8,'checksum':'xxh3-64:0000000000000000'}";
	expect_v2_error(&v, "chunk_table: offset 16 is inside the header and manifest");
}

static void rejects_block_table_past_end_of_file(void)
{
	struct v2 v;

	base(&v);
	v.table_count += 1;
	expect_v2_error(&v, "chunk_table: 9 entries (216 bytes at offset");
}

static void rejects_malformed_block_table_checksum(void)
{
	struct v2 v;

	base(&v);
	v.table_sum = "xxh3-64:XYZ";
	expect_v2_error(&v, "chunk_table: checksum 'xxh3-64:XYZ' is not");
}

static void rejects_block_table_checksum_mismatch(void)
{
	struct v2 v;

	base(&v);
	v.table_sum = "xxh3-64:0123456789abcdef";
	expect_v2_error(&v, "chunk_table: checksum mismatch: the manifest says xxh3-64:0123456789abcdef");
}

/* ---- model field rules ------------------------------------------------- */

#define MODEL_A(fields) \
	"{'name':'a','size':0,'checksum':'xxh3-64:2d06800538d394c2','offset':4096" fields "}"

static void empty_model(struct v2 *v, const char *model_json)
{
	memset(v, 0, sizeof *v);
	v2_add(v, "a", NULL, 0, "none", 4096);
	v2_layout(v);
	v->model_json[0] = model_json;
}

/* An empty model that gives no v2 key gets the defaults: none, 64 KiB
 * blocks, nothing stored, the first entry. */
static void empty_model_without_v2_keys_opens(void)
{
	struct v2 v;
	struct buf file;
	struct apb_bundle *b;
	const struct apb_model *m;

	empty_model(&v, MODEL_A(""));
	file = v2_bytes(&v);
	CHECK_EQ(open_buf(&file, &b), 0);
	m = apb_bundle_model(b, 0);
	CHECK_EQ(m->compression, APB_COMPRESSION_NONE);
	CHECK_EQ(m->block_size, 65536);
	CHECK_EQ(m->stored_size, 0);
	CHECK_EQ(m->first_block, 0);
	CHECK_EQ(m->block_count, 0);
	apb_bundle_close(b);
	free(file.p);
	v2_free(&v);
}

/* Models that leave out every key equal to its default read as those
 * that spell them, whatever the top level's defaults and whichever
 * model differs from them. */
static void v2_keys_left_out_take_their_defaults(void)
{
	static const struct {
		const char *top_comp;
		uint64_t top_cs, cs_a, cs_b;
	} cases[] = {
		{NULL, 0, 65536, 65536},   {NULL, 0, 4096, 65536},
		{"zstd", 0, 65536, 65536}, {"none", 4096, 4096, 8192},
		{"zstd", 8192, 8192, 8192},
	};
	static uint8_t a[200000], c[70000];

	text(a, sizeof a, 3);
	pattern(c, sizeof c, 4);
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		struct v2 full = {0}, compact;
		struct buf f1, f2;
		struct apb_bundle *b1, *b2;

		v2_add(&full, "a", a, sizeof a, "zstd", cases[k].cs_a);
		v2_add(&full, "b", c, sizeof c, "none", cases[k].cs_b);
		v2_add(&full, "c", NULL, 0, "none", cases[k].cs_b);
		v2_add(&full, "d", c, 5000, "zstd", cases[k].cs_a);
		v2_layout(&full);
		full.top_comp = cases[k].top_comp;
		full.top_cs = cases[k].top_cs;
		compact = full;
		compact.compact = true;
		f1 = v2_bytes(&full);
		f2 = v2_bytes(&compact);
		CHECK(apb_le32(f2.p + 12) < apb_le32(f1.p + 12)); /* manifest length */
		CHECK_EQ(open_buf(&f1, &b1), 0);
		CHECK_EQ(open_buf(&f2, &b2), 0);
		for (size_t i = 0; i < full.n; i++) {
			const struct apb_model *m1 = apb_bundle_model(b1, i);
			const struct apb_model *m2 = apb_bundle_model(b2, i);

			CHECK_EQ(m2->compression, m1->compression);
			CHECK_EQ(m2->block_size, m1->block_size);
			CHECK_EQ(m2->block_count, m1->block_count);
			CHECK_EQ(m2->stored_size, m1->stored_size);
			if (full.size[i]) /* an empty model's is the manifest's end */
				CHECK_EQ(m2->offset, m1->offset);
			CHECK_EQ(m2->first_block, m1->first_block);
			CHECK_EQ(m2->first_block, full.first[i]);
		}
		check_all_reads(b2, &full);
		apb_bundle_close(b1);
		apb_bundle_close(b2);
		free(f1.p);
		free(f2.p);
		v2_free(&full);
	}
}

static void rejects_bad_top_level_defaults(void)
{
	struct v2 v;

	base(&v);
	v.top_comp = "lz4";
	expect_v2_error(&v, "manifest: unknown compression 'lz4' (this apbundlefs reads none and zstd)");
	base(&v);
	v.top_cs = 6000;
	expect_v2_error(&v, "manifest: chunk_size 6000 is not a multiple of 4096");
	base(&v);
	v.top_cs = 32u << 20;
	expect_v2_error(&v, "manifest: chunk_size 33554432 is outside 4096 .. 16777216");
}

/* A model without first_chunk starts after the previous model's blocks,
 * here an empty model's that names entry 1. */
static void derived_first_chunk_follows_the_previous_model(void)
{
	static uint8_t b[3 * 4096 + 100];
	static char b_json[512];
	struct v2 v = {0};

	pattern(b, sizeof b, 2);
	v2_add(&v, "a", NULL, 0, "none", 4096);
	v2_add(&v, "b", b, sizeof b, "none", 4096);
	v2_layout(&v);
	v.compact = true;
	v.top_cs = 4096;
	v.first[0] = 1;
	/* b's object as if its entries really followed a's. */
	v2_model_json(&v, 1, v.first[1], b_json, sizeof b_json);
	v.model_json[1] = b_json;
	expect_v2_error(&v, "model 'b': its 4 blocks from table entry 1 run past the block table (4 entries)");
}

static void rejects_compression_that_is_not_a_string(void)
{
	struct v2 v;

	empty_model(&v, MODEL_A(",'compression':1,'stored_size':0,'chunk_size':4096,'first_chunk':0"));
	expect_v2_error(&v, "model 'a': 'compression' is not a string");
}

static void rejects_unknown_compression(void)
{
	struct v2 v;

	base(&v);
	v.comp[1] = "lz4";
	expect_v2_error(&v, "model 'b': unknown compression 'lz4' (this apbundlefs reads none and zstd)");
}

static void rejects_block_size_out_of_range(void)
{
	struct v2 v;

	base(&v);
	v.cs[1] = 0;
	expect_v2_error(&v, "model 'b': chunk_size 0 is outside 4096 .. 16777216");
	base(&v);
	v.cs[1] = (16u << 20) + 4096;
	expect_v2_error(&v, "model 'b': chunk_size 16781312 is outside 4096 .. 16777216");
}

static void rejects_block_size_not_multiple_of_4096(void)
{
	struct v2 v;

	base(&v);
	v.cs[1] = 6000;
	expect_v2_error(&v, "model 'b': chunk_size 6000 is not a multiple of 4096");
}

/* A stored size left out is the extent of the model's blocks from its
 * offset, which they must not end before. */
static void rejects_offset_past_the_models_blocks(void)
{
	static char a_json[512];
	struct v2 v;

	base(&v);
	v.compact = true;
	v.top_cs = 4096;
	v.off[0] = v.e[3].off + v.e[3].len + 1;
	snprintf(a_json, sizeof a_json,
		 "{'name':'a','size':%zu,'checksum':'xxh3-64:%016llx','offset':%llu,'compression':'zstd'}",
		 v.size[0],
		 (unsigned long long)XXH3_64bits(v.data[0], v.size[0]),
		 (unsigned long long)v.off[0]);
	v.model_json[0] = a_json;
	expect_v2_errorf(&v, "model 'a': its last block (table entry 3, %u bytes at offset %llu) does not end between its offset %llu and 2^64",
			 v.e[3].len, (unsigned long long)v.e[3].off,
			 (unsigned long long)v.off[0]);
}

static void rejects_empty_model_with_stored_bytes(void)
{
	struct v2 v;

	empty_model(&v, MODEL_A(",'compression':'none','chunk_size':4096,'stored_size':5,'first_chunk':0"));
	expect_v2_error(&v, "model 'a': size is 0 but stored_size is 5");
}

static void rejects_duplicate_v2_key(void)
{
	struct v2 v;

	empty_model(&v, MODEL_A(",'compression':'none','chunk_size':4096,'chunk_size':4096,'stored_size':0,'first_chunk':0"));
	expect_v2_error(&v, "models[0]: key 'chunk_size' appears twice");
}

/* ---- entry rules ------------------------------------------------------- */

static void rejects_blocks_past_the_table(void)
{
	struct v2 v;

	base(&v);
	v.first[1] = 5;
	expect_v2_error(&v, "model 'b': its 4 blocks from table entry 5 run past the block table (8 entries)");
	empty_model(&v, MODEL_A(",'compression':'none','chunk_size':4096,'stored_size':0,'first_chunk':1"));
	expect_v2_error(&v, "model 'a': its 0 blocks from table entry 1 run past the block table (0 entries)");
}

static void rejects_unknown_flags(void)
{
	struct v2 v;

	base(&v);
	v.e[5].flags |= 4;
	expect_v2_error(&v, "model 'b' block 1 (table entry 5): unknown flags 0x00000004");
}

static void rejects_zstd_block_in_none_model(void)
{
	struct v2 v;

	base(&v);
	v.e[6].flags = 1;
	expect_v2_error(&v, "model 'b' block 2 (table entry 6): a zstd frame in a model whose compression is 'none'");
}

static void rejects_unaligned_raw_block(void)
{
	struct v2 v;

	base(&v);
	v.e[3].flags = 0; /* a's last block, raw at the frame's offset */
	v.e[3].len = 100;
	drop_blob(&v, 3);
	expect_v2_error(&v, "model 'a' block 3 (table entry 3): raw block offset");
}

static void rejects_raw_block_of_wrong_length(void)
{
	struct v2 v;

	base(&v);
	v.e[7].len = 99;
	expect_v2_error(&v, "model 'b' block 3 (table entry 7): raw block stores 99 bytes, not the block's 100");
}

static void rejects_zstd_frame_of_bad_length(void)
{
	struct v2 v;

	base(&v);
	v.e[1].len = 0;
	expect_v2_error(&v, "model 'a' block 1 (table entry 1): zstd frame of 0 bytes is outside 1 .. ");
	base(&v);
	v.e[1].len = (uint32_t)ZSTD_compressBound(4096) + 1;
	drop_blob(&v, 1);
	expect_v2_error(&v, "(the bound for 4096 bytes)");
}

static void rejects_block_before_model_offset(void)
{
	struct v2 v;

	base(&v);
	v.off[0] += 1;
	v.stored[0] -= 1;
	expect_v2_error(&v, "model 'a' block 0 (table entry 0): offset 4096 is before the model's stored bytes (offset 4097)");
}

static void rejects_blocks_out_of_order(void)
{
	struct v2 v;
	struct v2_entry t;
	uint8_t *p;

	base(&v);
	t = v.e[1], v.e[1] = v.e[2], v.e[2] = t;
	p = v.blob[1], v.blob[1] = v.blob[2], v.blob[2] = p;
	expect_v2_errorf(&v, "model 'a' block 2 (table entry 2): offset %llu is before the end of block 1 (%llu); blocks must be in offset order without overlap",
			 (unsigned long long)v.e[2].off,
			 (unsigned long long)(v.e[1].off + v.e[1].len));
	base(&v);
	v.e[2].off = v.e[1].off + 1; /* overlaps block 1 */
	expect_v2_errorf(&v, "model 'a' block 2 (table entry 2): offset %llu is before the end of block 1 (%llu)",
			 (unsigned long long)v.e[2].off,
			 (unsigned long long)(v.e[1].off + v.e[1].len));
}

static void rejects_block_past_model_stored_bytes(void)
{
	struct v2 v;

	base(&v);
	v.stored[0] -= 1;
	expect_v2_errorf(&v, "model 'a' block 3 (table entry 3): %u bytes at offset %llu run past the model's stored bytes (which end at %llu)",
			 v.e[3].len, (unsigned long long)v.e[3].off,
			 (unsigned long long)(v.off[0] + v.stored[0]));
}

static void rejects_none_model_with_gap(void)
{
	struct v2 v;

	base(&v);
	/* Move b's last block one page on: aligned, in order, inside. */
	v.e[7].off += 4096;
	v.stored[1] += 4096;
	expect_v2_errorf(&v, "model 'b' block 3 (table entry 7): offset %llu is not %llu: a 'none' model's blocks lie back to back from its offset",
			 (unsigned long long)v.e[7].off,
			 (unsigned long long)(v.off[1] + 3 * 4096));
}

/* b names a's last entry as its first: caught by b's own rules (here the
 * frame in a "none" model). Two models can never both use one entry
 * (entries are not empty and models do not overlap), so what is left to
 * catch is entries no model uses. */
static void rejects_model_naming_another_models_entries(void)
{
	struct v2 v;

	base(&v);
	v.first[1] = 3;
	expect_v2_error(&v, "model 'b' block 0 (table entry 3)");
}

static void rejects_unused_entries(void)
{
	struct v2 v;

	base(&v);
	v.e[v.ne] = v.e[v.ne - 1]; /* a spare copy of b's last entry */
	v.blob[v.ne++] = NULL;
	v.table_count++;
	expect_v2_error(&v, "block table entries 8 .. 8 are used by no model");
	memset(&v, 0, sizeof v);
	v2_layout(&v);
	v.e[0] = (struct v2_entry){.off = 4096, .len = 4096};
	v.ne = v.table_count = 1;
	expect_v2_error(&v, "block table entries 0 .. 0 are used by no model");
}

/* An empty model's first_block may be any index up to the count. */
static void empty_model_may_name_any_entry(void)
{
	static uint8_t d[4096];
	struct v2 v = {0};
	struct apb_bundle *bundle;
	struct buf b;

	pattern(d, sizeof d, 4);
	v2_add(&v, "x", d, sizeof d, "none", 4096);
	v2_add(&v, "y", NULL, 0, "none", 4096);
	v2_layout(&v);
	for (uint64_t f = 0; f <= 1; f++) {
		v.first[1] = f;
		b = v2_bytes(&v);
		CHECK_EQ(open_buf(&b, &bundle), 0);
		apb_bundle_close(bundle);
		free(b.p);
	}
	v2_free(&v);
}

static void rejects_table_overlapping_a_model(void)
{
	struct v2 v;

	base(&v);
	v.table_off = v.e[7].off; /* b's last block */
	expect_v2_error(&v, "overlaps model 'b'");
}

/* ---- stages: what one read of a remote source covers ------------------- */

#define KiB 1024u
#define MiB (1024u * 1024u)
#define PIECE_BYTES (128u * KiB) /* v2.c's PIECE: a local stage's window */

static struct apb_block_entry stage_t[64];

/* A model of n blocks of bs bytes (the last one last bytes, 0: bs) whose
 * entries are frames of len bytes back to back from 1 MiB on. */
static struct apb_model stage_model(uint64_t bs, uint64_t n, uint32_t len)
{
	struct apb_model m = {.name = "m", .size = n * bs, .block_size = bs,
			      .block_count = n,
			      .compression = APB_COMPRESSION_ZSTD};

	for (uint64_t i = 0; i < n; i++)
		stage_t[i] = (struct apb_block_entry){
			.offset = MiB + i * len, .length = len,
			.flags = APB_BLOCK_ZSTD};
	m.offset = MiB;
	m.stored_size = n * len;
	return m;
}

/* iovecs of each bytes covering [0, total) of a buffer that is not
 * touched (the plan only looks at the lengths). */
static int slots(struct iovec *iov, size_t total, size_t each)
{
	static uint8_t any;
	int n = 0;

	for (size_t at = 0; at < total; at += each)
		iov[n++] = (struct iovec){&any, each};
	return n;
}

static void plan(const struct apb_model *m, uint64_t pos, uint64_t end,
		 size_t slot, bool remote, struct apb_v2_stage *st)
{
	static struct iovec iov[4096];
	int n = slots(iov, end - pos, slot);

	apb_v2_stage_plan(m, stage_t, pos, end, iov, n, remote, st);
}

/* A local file: a stage is one block through the context's piece buffer,
 * as before stages (no read of a frame's stored size at once). */
static void stage_local_is_one_block_through_a_piece(void)
{
	struct apb_model m = stage_model(64 * KiB, 32, 40000);
	struct apb_v2_stage st;

	plan(&m, 0, MiB, 64 * KiB, false, &st);
	CHECK_EQ(st.blocks, 1);
	CHECK_EQ(st.span, 40000);
	CHECK_EQ(st.scratch, 0); /* decoded straight into its slot */
	CHECK_EQ(st.window, PIECE_BYTES);
	plan(&m, 0, MiB, 4 * KiB, false, &st);
	CHECK_EQ(st.scratch, 64 * KiB); /* a frame over 16 slots */
}

/* Remote: a cache run of 16 adjacent frames is one stage, one window. */
static void stage_remote_takes_the_run_of_adjacent_frames(void)
{
	struct apb_model m = stage_model(64 * KiB, 32, 40000);
	struct apb_v2_stage st;

	plan(&m, 0, MiB, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 16);
	CHECK_EQ(st.span, 16 * 40000);
	CHECK_EQ(st.scratch, 0);
	CHECK_EQ(st.window, 16 * 40000);
	/* From the middle of block 3 to 100 bytes into block 9. */
	plan(&m, 3 * 64 * KiB + 5, 9 * 64 * KiB + 100, 4 * KiB, true, &st);
	CHECK_EQ(st.blocks, 7);
	CHECK_EQ(st.span, 7 * 40000);
	CHECK_EQ(st.scratch, 64 * KiB);
	CHECK_EQ(st.window, 7 * 40000);
	/* The read's last byte ends the stage even where frames go on. */
	plan(&m, 0, 64 * KiB, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 1);
}

/* A gap of a raw block's alignment or more between stored blocks ends a
 * stage; less (the padding before an aligned raw block) does not. */
static void stage_remote_stops_at_a_gap(void)
{
	struct apb_model m = stage_model(64 * KiB, 32, 40000);
	struct apb_v2_stage st;

	for (uint64_t i = 4; i < 32; i++)
		stage_t[i].offset += 4095;
	plan(&m, 0, MiB, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 16);
	CHECK_EQ(st.span, 16 * 40000 + 4095);
	for (uint64_t i = 4; i < 32; i++)
		stage_t[i].offset += 1;
	plan(&m, 0, MiB, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 4);
	CHECK_EQ(st.span, 4 * 40000);
	/* A raw block only partly wanted joins the stage like a frame. */
	m = stage_model(64 * KiB, 32, 40000);
	stage_t[2].flags = 0;
	stage_t[2].length = 64 * KiB;
	for (uint64_t i = 3; i < 32; i++)
		stage_t[i].offset += 64 * KiB - 40000;
	plan(&m, 0, 2 * 64 * KiB + 10, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 3);
	CHECK_EQ(st.span, 2 * 40000 + 64 * KiB);
}

/* At most APB_V2_STAGE_MAX stored bytes per stage, and a window no
 * larger; a first block larger than that is streamed through it. */
static void stage_remote_is_bounded_by_the_stage_max(void)
{
	struct apb_model m = stage_model(MiB, 16, 1000000);
	struct apb_v2_stage st;

	plan(&m, 0, 16 * MiB, MiB, true, &st);
	CHECK_EQ(APB_V2_STAGE_MAX, 4 * MiB);
	CHECK_EQ(st.blocks, 4);
	CHECK_EQ(st.span, 4000000);
	CHECK_EQ(st.window, 4000000);
	m = stage_model(8 * MiB, 2, 6 * MiB);
	plan(&m, 0, 16 * MiB, 8 * MiB, true, &st);
	CHECK_EQ(st.blocks, 1);
	CHECK_EQ(st.span, 6 * MiB);
	CHECK_EQ(st.window, APB_V2_STAGE_MAX);
}

/* The scratch bound (v2.c): a stage's window plus its block scratch stays
 * within APB_BLOCK_SIZE_MAX, or its window is the context's own piece
 * buffer. A 16 MiB frame decoded into scratch leaves no room for more. */
static void stage_remote_keeps_the_scratch_bound(void)
{
	struct apb_model m = stage_model(16 * MiB, 3, 5 * MiB);
	struct apb_v2_stage st;
	uint64_t seed = 88172645463325252ull;

	plan(&m, 0, 48 * MiB, 64 * KiB, true, &st);
	CHECK_EQ(st.blocks, 1);
	CHECK_EQ(st.scratch, 16 * MiB);
	CHECK_EQ(st.window, PIECE_BYTES);
	plan(&m, 0, 48 * MiB, 16 * MiB, true, &st); /* straight into a slot */
	CHECK_EQ(st.blocks, 1);  /* two spans of 5 MiB exceed the stage max */
	CHECK_EQ(st.scratch, 0);
	CHECK_EQ(st.window, APB_V2_STAGE_MAX);
	/* Random models and reads: the rules hold for each. */
	for (int k = 0; k < 2000; k++) {
		uint64_t bs, n, pos, end, last;
		uint32_t len;
		size_t slot;

		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		bs = 4096ull << (seed % 13);              /* 4 KiB .. 16 MiB */
		n = 1 + (seed >> 8) % 40;
		len = (uint32_t)(1 + (seed >> 16) % (bs + bs / 64));
		slot = (size_t)4096 << ((seed >> 40) % 13);
		m = stage_model(bs, n, len);
		pos = (seed >> 24) % m.size;
		end = pos + 1 + (seed >> 32) % (m.size - pos);
		if ((end - pos) / slot > 4000)
			end = pos + 4000 * (uint64_t)slot;
		plan(&m, pos, end, slot, true, &st);
		last = pos / bs + st.blocks - 1;
		CHECK(st.blocks >= 1);
		CHECK(last * bs < end);
		CHECK_EQ(st.span, stage_t[last].offset + len -
					  stage_t[pos / bs].offset);
		CHECK(st.scratch <= bs);
		CHECK(st.window >= PIECE_BYTES);
		CHECK(st.window == PIECE_BYTES ||
		      st.window + st.scratch <= APB_BLOCK_SIZE_MAX);
		CHECK(st.window <= APB_V2_STAGE_MAX ||
		      st.window == PIECE_BYTES);
		CHECK(st.blocks == 1 ||
		      (st.span <= APB_V2_STAGE_MAX &&
		       st.span + st.scratch <= APB_BLOCK_SIZE_MAX));
		/* Every block of the read up to the stage max is taken. */
		CHECK((last + 1) * bs >= end ||
		      st.span + len > APB_V2_STAGE_MAX ||
		      st.span + len + bs > APB_BLOCK_SIZE_MAX);
	}
}

int main(void)
{
	RUN(v2_exposes_compression_block_size_and_count);
	RUN(v2_round_trip_at_block_boundaries);
	RUN(v2_bundle_with_no_models_opens);
	RUN(v2_run_of_raw_blocks_into_small_iovecs);
	RUN(v2_concurrent_reads_share_the_context_pool);
	RUN(v2_blocks_larger_than_a_piece);
	RUN(v2_flipped_byte_in_raw_block_is_ebadmsg);
	RUN(v2_flipped_byte_in_zstd_frame_is_ebadmsg);
	RUN(v2_frame_with_wrong_content_is_ebadmsg);
	RUN(v2_frame_of_wrong_length_is_ebadmsg);
	RUN(v2_truncated_file_is_eio);

	RUN(rejects_v2_manifest_that_does_not_begin_with_brace);
	RUN(rejects_missing_block_table);
	RUN(rejects_block_table_count_above_limit);
	RUN(rejects_unaligned_block_table);
	RUN(rejects_block_table_inside_manifest);
	RUN(rejects_block_table_past_end_of_file);
	RUN(rejects_malformed_block_table_checksum);
	RUN(rejects_block_table_checksum_mismatch);
	RUN(empty_model_without_v2_keys_opens);
	RUN(v2_keys_left_out_take_their_defaults);
	RUN(rejects_bad_top_level_defaults);
	RUN(derived_first_chunk_follows_the_previous_model);
	RUN(rejects_compression_that_is_not_a_string);
	RUN(rejects_unknown_compression);
	RUN(rejects_block_size_out_of_range);
	RUN(rejects_block_size_not_multiple_of_4096);
	RUN(rejects_offset_past_the_models_blocks);
	RUN(rejects_empty_model_with_stored_bytes);
	RUN(rejects_duplicate_v2_key);
	RUN(rejects_blocks_past_the_table);
	RUN(rejects_unknown_flags);
	RUN(rejects_zstd_block_in_none_model);
	RUN(rejects_unaligned_raw_block);
	RUN(rejects_raw_block_of_wrong_length);
	RUN(rejects_zstd_frame_of_bad_length);
	RUN(rejects_block_before_model_offset);
	RUN(rejects_blocks_out_of_order);
	RUN(rejects_block_past_model_stored_bytes);
	RUN(rejects_none_model_with_gap);
	RUN(rejects_model_naming_another_models_entries);
	RUN(rejects_unused_entries);
	RUN(empty_model_may_name_any_entry);
	RUN(rejects_table_overlapping_a_model);
	RUN(stage_local_is_one_block_through_a_piece);
	RUN(stage_remote_takes_the_run_of_adjacent_frames);
	RUN(stage_remote_stops_at_a_gap);
	RUN(stage_remote_is_bounded_by_the_stage_max);
	RUN(stage_remote_keeps_the_scratch_bound);
	return 0;
}
