/*
 * format.h - internal contract between the bundle reader (bundle.c) and the
 * per-layout manifest parsers (the JSON manifest of SPEC §2 version 1 in
 * bundle.c, aprender's binary manifest in aprender.c, and later version 2).
 *
 * Division of labour:
 *   bundle.c   opens the file, reads the fixed header (magic, version),
 *              picks a layout, and after the parser returns runs the checks
 *              every layout shares: data after the manifest, offset + stored
 *              size inside the file (overflow-safe), no overlap, the name
 *              set. It then sorts the models by name and serves reads.
 *   a parser   reads and decodes its manifest and fills a struct
 *              apb_manifest: one struct apb_model per entry, in manifest
 *              order, each name already checked with apb_name_check() on its
 *              true byte length (so embedded NULs cannot hide behind a
 *              C string) and copied into the manifest's name pool.
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

#include "apbundle/bundle.h"
#include "error.h"

#define APB_V1_HEADER_LEN 16u       /* magic, u32 version, u32 manifest length */
#define APB_APRENDER_HEADER_LEN 20u /* magic, u32 version, u64 manifest length */
#define APB_HEAD_LEN 20u            /* bytes open() reads before dispatching */

/* What open() knows when it hands the file to a parser. */
struct apb_source {
	int fd;
	uint64_t file_size;
	const uint8_t *head; /* the first head_len bytes of the file */
	size_t head_len;     /* min(file_size, APB_HEAD_LEN) */
};

/* What a parser hands back. On success the caller owns both arrays and
 * frees them with apb_manifest_free(); on failure the parser has freed
 * everything and left the struct zeroed. */
struct apb_manifest {
	struct apb_model *models; /* count entries, in manifest order */
	size_t count;
	char *names;              /* pool every models[i].name points into */
	uint64_t data_start;      /* first file byte after header + manifest */
};

void apb_manifest_free(struct apb_manifest *m);

/* aprender's binary layout (aprender.c). */
int apb_aprender_parse(const struct apb_source *src, struct apb_manifest *out,
		       char *err, size_t err_len);

/*
 * Read the manifest bytes [off, off + len) after checking len against 0,
 * APB_MANIFEST_MAX and the file size. *out is malloc'ed, len + 1 bytes, NUL
 * terminated so text parsers may treat it as a string. (bundle.c)
 */
int apb_manifest_read(const struct apb_source *src, uint64_t off, uint64_t len,
		      uint8_t **out, char *err, size_t err_len);

/* pread() exactly len bytes at off: 0, -EIO if the file ends first, or the
 * read errno. Retries on EINTR and short reads. (bundle.c) */
int apb_pread_full(int fd, void *buf, size_t len, uint64_t off);

/*
 * Render len bytes of a (possibly invalid) name for an error message: bytes
 * that are control characters or not part of valid UTF-8 become \xNN, and a
 * long name is cut at a character boundary and ends in "...". Returns buf,
 * always NUL terminated. (name.c)
 */
#define APB_QUOTE_MAX 200 /* buffer size for a quoted name in messages */
const char *apb_name_quote(const char *s, size_t len, char *buf,
			   size_t buf_len);

static inline uint32_t apb_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t apb_le64(const uint8_t *p)
{
	return (uint64_t)apb_le32(p) | (uint64_t)apb_le32(p + 4) << 32;
}

/* The common case: a malformed bundle. */
#define apb_errf(err, err_len, ...) apb_fail(-EINVAL, err, err_len, __VA_ARGS__)

#endif
