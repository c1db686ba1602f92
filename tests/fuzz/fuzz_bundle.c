/*
 * fuzz_bundle.c - libFuzzer target for the bundle reader: header, manifest
 * (v1 JSON, aprender binary, v2 JSON + block table) and the reads that
 * follow from them.
 *
 * Each input is written to one memfd and opened through the public API by
 * its /proc/self/fd path, exactly as the daemon opens a file; nothing in the
 * library knows it is being fuzzed. A bundle that opens is then read: the
 * start and the end of every model, plus a scattered read at an offset taken
 * from the input, and every byte that the layout stores raw is compared
 * with the input itself (a reader must fail, never return wrong bytes).
 *
 * Invariants checked (abort() = a finding):
 *   - a refused bundle gives a negative errno and exactly one non-empty
 *     line of message;
 *   - an accepted bundle's models lie inside the file and after the header,
 *     names are found again by apb_bundle_find(), and the directory tree
 *     built from them has one file per model;
 *   - reads return exactly the requested length (clipped at the model's
 *     end), and for v1, aprender and v2 'none' models the file's bytes; a
 *     v2 read may instead fail with -EBADMSG (a block that fails its
 *     checksum or does not decompress), naming a block it touched; nothing
 *     else (no -EIO: every stored byte was promised inside the file).
 *
 * Build: meson setup build-fuzz -Dfuzz=true (clang only); run:
 * scripts/fuzz.sh SECONDS.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "apbundle/bundle.h"
#include "apbundle/tree.h"

#include <xxhash.h>
#include <zstd.h>

#define READ_HEAD (256u << 10) /* bytes read from each model's start */
#define READ_TAIL (64u << 10)  /* and from its end */
#define READ_LEN (48u << 10)   /* one apb_bundle_read(); not a power of 2 */

static inline uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int fd = -1;
static char path[64];
static uint8_t buf[READ_LEN];

#define require(cond)                                                     \
	do {                                                              \
		if (!(cond)) {                                            \
			fprintf(stderr, "fuzz_bundle: %s:%d: %s\n",       \
				__FILE__, __LINE__, #cond);               \
			abort();                                          \
		}                                                         \
	} while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fd = memfd_create("apbundle-fuzz", MFD_CLOEXEC);
	if (fd < 0) {
		perror("memfd_create");
		abort();
	}
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	return 0;
}

static void put_input(const uint8_t *data, size_t size)
{
	size_t done = 0;

	require(ftruncate(fd, 0) == 0);
	while (done < size) {
		ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);

		require(w > 0);
		done += (size_t)w;
	}
}

/* The model's bytes are the file's bytes at its offset: v1, aprender and
 * v2 'none' models (whose blocks lie back to back). */
static bool stored_raw(const struct apb_bundle *b, const struct apb_model *m)
{
	return apb_bundle_layout(b) != APB_LAYOUT_V2 ||
	       m->compression == APB_COMPRESSION_NONE;
}

/* Check a read of want bytes at off that returned r into out; bad is the
 * block apb_bundle_preadv() blamed (UINT64_MAX if not asked). Only v2 has
 * block checksums, so only v2 may answer -EBADMSG, and then for a block
 * the read touched. */
static void check_read(const struct apb_bundle *b, const struct apb_model *m,
		       const uint8_t *data, uint64_t off, size_t want, long r,
		       const uint8_t *out, uint64_t bad)
{
	uint64_t expect = off >= m->size ? 0 : m->size - off;

	if (expect > want)
		expect = want;
	if (r == -EBADMSG && apb_bundle_layout(b) == APB_LAYOUT_V2) {
		require(expect > 0);
		if (bad != UINT64_MAX)
			require(bad < m->block_count &&
				bad * m->block_size < off + expect &&
				(bad + 1) * m->block_size > off);
		return;
	}
	require(r >= 0 && (uint64_t)r == expect);
	if (stored_raw(b, m) && r > 0)
		require(memcmp(out, data + m->offset + off, (size_t)r) == 0);
}

static void read_range(const struct apb_bundle *b, size_t i,
		       const uint8_t *data, uint64_t off, uint64_t len)
{
	const struct apb_model *m = apb_bundle_model(b, i);

	while (len > 0) {
		size_t n = len < READ_LEN ? (size_t)len : READ_LEN;
		long r = apb_bundle_read(b, i, off, buf, n);

		check_read(b, m, data, off, n, r, buf, UINT64_MAX);
		if (r <= 0)
			return;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
}

/* Three buffers, the middle one empty, at an offset picked by the input. */
static void read_scattered(const struct apb_bundle *b, size_t i,
			   const uint8_t *data, uint64_t pick)
{
	const struct apb_model *m = apb_bundle_model(b, i);
	uint64_t off = m->size ? pick % m->size : 0, bad = UINT64_MAX;
	struct iovec iov[3] = {
		{.iov_base = buf, .iov_len = 4095},
		{.iov_base = buf + 4095, .iov_len = 0},
		{.iov_base = buf + 4095, .iov_len = 8193},
	};
	long r = apb_bundle_preadv(b, i, off, iov, 3, &bad);

	if (r == -EBADMSG)
		require(bad != UINT64_MAX);
	check_read(b, m, data, off, 4095 + 8193, r, buf, bad);
}

static void check_model(const struct apb_bundle *b, size_t i,
			const uint8_t *data, size_t size)
{
	const struct apb_model *m = apb_bundle_model(b, i);
	uint64_t pick = 0;
	size_t found = SIZE_MAX;

	require(m && m->name && m->name[0]);
	require(m->offset >= 16 && m->offset <= size &&
		m->stored_size <= size - m->offset);
	if (apb_bundle_layout(b) == APB_LAYOUT_V2) {
		require(m->block_size >= APB_BLOCK_SIZE_MIN &&
			m->block_size <= APB_BLOCK_SIZE_MAX &&
			m->block_size % 4096 == 0);
		require(m->block_count ==
			m->size / m->block_size + !!(m->size % m->block_size));
		if (m->compression == APB_COMPRESSION_NONE)
			require(m->size == 0 ||
				(m->offset % 4096 == 0 && m->stored_size >= m->size));
	} else {
		require(m->stored_size == m->size && m->block_size == 0 &&
			m->block_count == 0);
	}
	require(apb_bundle_find(b, m->name, &found) == 0 && found == i);

	read_range(b, i, data, 0, READ_HEAD);
	if (m->size > READ_HEAD) {
		uint64_t from = m->size - READ_TAIL;

		read_range(b, i, data, from > READ_HEAD ? from : READ_HEAD,
			   READ_TAIL);
	}
	read_range(b, i, data, m->size, 1); /* at the end: 0 bytes */
	for (size_t k = 0; k < 8 && k < size; k++)
		pick = pick << 8 | data[size - 1 - k];
	read_scattered(b, i, data, pick + i);
}

/* The daemon's next step: the directory tree of the accepted names. Every
 * model is one file node, named by its last component. */
static void check_tree(const struct apb_bundle *b)
{
	struct apb_tree *t = NULL;
	size_t files = 0;

	require(apb_tree_build(b, &t) == 0);
	for (uint64_t ino = APB_TREE_ROOT; ino <= apb_tree_count(t); ino++) {
		const struct apb_tree_node *n = apb_tree_node(t, ino);
		const char *name, *last;

		require(n);
		if (n->is_dir)
			continue;
		require(n->model < apb_bundle_count(b));
		name = apb_bundle_model(b, n->model)->name;
		last = strrchr(name, '/');
		require(strcmp(n->name, last ? last + 1 : name) == 0);
		files++;
	}
	require(files == apb_bundle_count(b));
	apb_tree_free(t);
}

/* One bundle: open it, and if it opens, read and check everything. */
static void run_one(const uint8_t *data, size_t size)
{
	struct apb_bundle *b = NULL;
	char err[512];
	int rc;

	put_input(data, size);
	err[0] = '\0';
	rc = apb_bundle_open(path, &b, err, sizeof err);
	if (rc) {
		require(rc < 0 && !b);
		require(err[0] != '\0' && !strchr(err, '\n'));
		return;
	}
	require(b && apb_bundle_stat(b)->st_size == (off_t)size);
	for (size_t i = 0; i < apb_bundle_count(b); i++)
		check_model(b, i, data, size);
	check_tree(b);
	require(apb_bundle_model(b, apb_bundle_count(b)) == NULL);
	require(apb_bundle_read(b, apb_bundle_count(b), 0, buf, 1) == -EINVAL);
	apb_bundle_close(b);
}

/* ---- version 2 checksum fix-up ------------------------------------------
 * A mutated block table almost never matches the XXH3 the manifest gives
 * for it, so without help the fuzzer would stop at that check and never
 * reach the per-entry rules or the reads by block. A v2 input is therefore
 * run twice: as it is, and with the checksums recomputed - each entry's
 * XXH3 from its bytes (raw) or from its decoded frame (zstd), then the
 * table's, written over the manifest's 16 hex digits. The parse here is
 * deliberately loose (first "offset", "count" and "checksum" after
 * "chunk_table"); when it finds nothing to fix, the second run is skipped.
 */

/* Where the value of the first "key" at or after s starts; NULL if none. */
static const char *after_key(const char *s, const char *key)
{
	const char *p = s ? strstr(s, key) : NULL;

	if (!p)
		return NULL;
	p += strlen(key);
	while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' ||
	       *p == '\r')
		p++;
	return p;
}

static void put_hex(char *at, uint64_t v)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 15; i >= 0; i--, v >>= 4)
		at[i] = hex[v & 15];
}

/* XXH3 of the bytes entry e stands for, if they can be had. */
static bool entry_hash(const uint8_t *data, size_t size, const uint8_t *e,
		       uint64_t *h)
{
	uint64_t off = le64(e);
	uint32_t len = le32(e + 8), flags = le32(e + 12);
	unsigned long long n;
	void *out;

	if (off > size || len > size - off)
		return false;
	if (flags == 0) {
		*h = XXH3_64bits(data + off, len);
		return true;
	}
	n = ZSTD_getFrameContentSize(data + off, len);
	if (flags != 1 || n > (16u << 20)) /* also the error values */
		return false;
	out = malloc(n ? n : 1);
	require(out);
	if (ZSTD_decompress(out, n, data + off, len) != n) {
		free(out);
		return false;
	}
	*h = XXH3_64bits(out, n);
	free(out);
	return true;
}

/* Fix the checksums of v2 input d (a copy, size bytes); true if changed. */
static bool fix_v2(uint8_t *d, size_t size)
{
	uint64_t n, toff, count, h;
	const char *ct, *o, *c, *k;
	char *man, hex[16];
	uint8_t *at;
	bool changed = false;

	if (size < 16 || memcmp(d, APB_MAGIC, 8) != 0 || le32(d + 8) != 2)
		return false;
	n = le32(d + 12);
	if (n > size - 16)
		return false;
	man = strndup((const char *)d + 16, n); /* stops at a NUL, too */
	require(man);
	ct = strstr(man, "\"chunk_table\"");
	o = after_key(ct, "\"offset\"");
	c = after_key(ct, "\"count\"");
	k = after_key(ct, "\"checksum\"");
	if (!o || !c || !k || strncmp(k, "\"xxh3-64:", 9) != 0 ||
	    strlen(k) < 9 + 16)
		goto out;
	toff = strtoull(o, NULL, 10);
	count = strtoull(c, NULL, 10);
	if (toff > size || count > (size - toff) / 24)
		goto out;
	for (uint64_t i = 0; i < count; i++) {
		uint8_t *e = d + toff + i * 24;

		if (entry_hash(d, size, e, &h) && le64(e + 16) != h) {
			for (int b = 0; b < 8; b++)
				e[16 + b] = (uint8_t)(h >> (8 * b));
			changed = true;
		}
	}
	put_hex(hex, XXH3_64bits(d + toff, count * 24));
	at = d + 16 + (k - man) + 9; /* man is the manifest's bytes from 16 */
	if (memcmp(at, hex, 16) != 0) {
		memcpy(at, hex, 16);
		changed = true;
	}
out:
	free(man);
	return changed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *fixed;

	run_one(data, size);
	fixed = malloc(size ? size : 1);
	require(fixed);
	memcpy(fixed, data, size);
	if (fix_v2(fixed, size))
		run_one(fixed, size);
	free(fixed);
	return 0;
}
