/*
 * format.h - internal contract between the bundle reader (bundle.c) and the
 * layers under it: the per-layout manifest parsers (manifest_json.c for the
 * JSON manifests of versions 1 and 2, aprender.c for aprender's binary
 * manifest), version 2's block table and reads by block (v2.c), and what
 * they share (manifest.c). All of them read the file through source.h.
 *
 * Division of labour:
 *   bundle.c   opens the source, reads the fixed header (magic, version),
 *              picks a layout, calls its parser (and, for version 2,
 *              apb_v2_table_read()), then runs the checks every layout
 *              shares: data after the manifest, offset + stored size inside
 *              the file (overflow-safe), no overlap, the name set. It then
 *              sorts the models by name and serves reads.
 *   a parser   reads and decodes its manifest and fills a struct
 *              apb_manifest: one struct apb_model per entry, in manifest
 *              order, each name already checked with apb_name_check() on its
 *              true byte length (so embedded NULs cannot hide behind a
 *              C string) and copied into the manifest's name pool.
 * No file here calls into bundle.c: the layers only look down.
 *
 * Nothing here is installed or visible outside libapbundle.
 */
#ifndef APB_CORE_FORMAT_H
#define APB_CORE_FORMAT_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include "apbundle/bundle.h"
#include "apbundle/name.h"
#include "error.h"
#include "source.h"

#define APB_V1_HEADER_LEN 16u       /* magic, u32 version, u32 manifest length (versions 1 and 2) */
#define APB_APRENDER_HEADER_LEN 20u /* magic, u32 version, u64 manifest length */

/* One entry of the version 2 block table (the manifest's "chunk_table"),
 * decoded (24 bytes on disk). */
struct apb_block_entry {
	uint64_t offset; /* absolute file offset of the stored bytes */
	uint32_t length; /* stored bytes */
	uint32_t flags;  /* APB_BLOCK_ZSTD or 0 */
	uint64_t xxh3;   /* of the block's uncompressed bytes */
};

#define APB_V2_ENTRY_LEN 24u
#define APB_BLOCK_ZSTD 1u
#define APB_V2_TABLE_ALIGN 8u
/* A version 2 manifest's "chunk_size" when its top level gives none. */
#define APB_V2_BLOCK_DEFAULT (64u << 10)
/* A version 2 model's offset or stored size that its manifest entry
 * leaves to the block table (apb_v2_table_read() fills it in); no JSON
 * integer is this large. */
#define APB_V2_FROM_TABLE UINT64_MAX

/* What a parser hands back. On success the caller owns both arrays and
 * frees them with apb_manifest_free(); on failure the parser has freed
 * everything and left the struct zeroed. */
struct apb_manifest {
	struct apb_model *models; /* count entries, in manifest order */
	size_t count;
	char *names;              /* pool every models[i].name points into */
	uint64_t data_start;      /* first file byte after header + manifest */
	/* Version 2: the block table, read and checksummed by the parser,
	 * checked against the models by apb_v2_check_blocks(). */
	struct apb_block_entry *blocks;
	uint64_t block_count;
	uint64_t table_offset;
};

void apb_manifest_free(struct apb_manifest *m);

/* Where the manifest of version 2 says its block table is, and the
 * manifest's text buffer, done with, handed on for the table to reuse. */
struct apb_v2_table_ref {
	uint64_t offset, count, xxh3;
	uint8_t *spare; /* malloc'ed; apb_v2_table_read() takes it */
};

/* The JSON manifest of versions 1 and 2 (manifest_json.c); for version 2
 * *table (when not NULL) gets the block table's place, which the caller
 * reads with apb_v2_table_read(). */
int apb_json_manifest_parse(const struct apb_source *src, unsigned version,
			    struct apb_manifest *m,
			    struct apb_v2_table_ref *table, char *err,
			    size_t err_len);

/* aprender's binary layout (aprender.c). */
int apb_aprender_parse(const struct apb_source *src, struct apb_manifest *out,
		       char *err, size_t err_len);

/*
 * Read the manifest bytes [off, off + len) after checking len against 0,
 * APB_MANIFEST_MAX and the file size. *out is malloc'ed, len + 1 bytes, NUL
 * terminated so text parsers may treat it as a string. (manifest.c)
 */
int apb_manifest_read(const struct apb_source *src, uint64_t off, uint64_t len,
		      uint8_t **out, char *err, size_t err_len);

/*
 * Version 2 (v2.c). apb_v2_table_read() checks the table's place against
 * the file and data_start, reads it with one pread(), verifies its XXH3
 * and decodes it into m->blocks, which reuse table->spare (always taken:
 * reused or freed). apb_v2_check_blocks() runs after the
 * shared checks (extents are then known not to overflow) and enforces every
 * per-entry rule of the format. Both return 0 or a negative errno with one
 * line in err.
 */
int apb_v2_table_read(const struct apb_source *src,
		      struct apb_v2_table_ref *table, struct apb_manifest *m,
		      char *err, size_t err_len);
int apb_v2_check_blocks(const struct apb_manifest *m, char *err,
			size_t err_len);

/* Reusable decompression contexts and scratch buffers for reads by block:
 * thread-safe, with a bounded number kept while idle and a bound on the
 * scratch all reads hold at once (v2.c). */
struct apb_v2_reader;
int apb_v2_reader_new(struct apb_v2_reader **out);
void apb_v2_reader_free(struct apb_v2_reader *r);

/* Bytes [off, off + want) of model m (want already clipped to its size),
 * whose block table is table, from src into iov, verified block by block:
 * want or a negative errno, -EBADMSG with *bad_block set (when not NULL)
 * for a block that failed twice. */
long apb_v2_preadv(const struct apb_source *src, struct apb_v2_reader *r,
		   const struct apb_model *m,
		   const struct apb_block_entry *table, uint64_t off,
		   const struct iovec *iov, int iovcnt, size_t want,
		   uint64_t *bad_block);

/* Stored bytes a stage reads with one request from a remote source (v2.c:
 * "Stages"). */
#define APB_V2_STAGE_MAX (4u << 20)

/* What one context reads through one window: blocks [pos / block_size,
 * + blocks) of a read, whose stored bytes span span bytes from the first
 * one's offset; scratch, the most block scratch one of them needs (a frame
 * not decoded straight into its destination); window, the bytes of stored
 * data each read of the source brings. */
struct apb_v2_stage {
	uint64_t blocks;
	uint64_t span;
	size_t scratch;
	size_t window;
};

/* The stage that begins at byte pos of m (a read up to byte end into iov,
 * whose first byte is pos's), for a remote source or a local one. Exposed
 * for the unit test; apb_v2_preadv() plans its stages with it. */
void apb_v2_stage_plan(const struct apb_model *m,
		       const struct apb_block_entry *table, uint64_t pos,
		       uint64_t end, const struct iovec *iov, int iovcnt,
		       bool remote, struct apb_v2_stage *st);

/* apb_name_quote() of a model's name; q holds APB_QUOTE_MAX bytes. */
static inline const char *apb_mq(const struct apb_model *m, char *q)
{
	return apb_name_quote(m->name, strlen(m->name), q, APB_QUOTE_MAX);
}

static inline uint32_t apb_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t apb_le64(const uint8_t *p)
{
	return (uint64_t)apb_le32(p) | (uint64_t)apb_le32(p + 4) << 32;
}


#endif
