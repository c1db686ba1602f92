/*
 * source.h - where a bundle's bytes come from: the lowest layer of the
 * reader. The bundle (bundle.c), its manifest parsers (manifest.c,
 * manifest_json.c, aprender.c) and version 2's reads by block (v2.c) read
 * the file only through these calls, so nothing above this layer knows
 * whether the bytes come from a local file - today the only kind - or,
 * later, from a server.
 *
 * A source never changes after open (apb_source_direct_io() included,
 * which is called before the source is shared); every read is a pread on
 * its descriptors, so any number of threads may read one source at once.
 * Internal to libapbundle; not installed.
 */
#ifndef APB_CORE_SOURCE_H
#define APB_CORE_SOURCE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define APB_HEAD_LEN 20u /* bytes read at open, before any layout is chosen */

struct apb_source;

/* Open the regular file at path (a FIFO or device is refused without
 * blocking) and read its first min(size, APB_HEAD_LEN) bytes. 0 or a
 * negative errno with one line in err. */
int apb_source_open_file(const char *path, struct apb_source **out,
			 char *err, size_t err_len);
void apb_source_close(struct apb_source *s);

/* The size at open, and the bytes read at open (*len of them). */
uint64_t apb_source_size(const struct apb_source *s);
const uint8_t *apb_source_head(const struct apb_source *s, size_t *len);

/* The file's stat at open (identity, size, mtime): what a caller checks a
 * later stat against to see whether the file changed. */
const struct stat *apb_source_stat(const struct apb_source *s);

/* Exactly len bytes at off into buf, through the page cache: 0, -EIO if
 * the source ends first, or the read's negative errno. For metadata
 * (header, manifest, block table). */
int apb_source_pread(const struct apb_source *s, void *buf, size_t len,
		     uint64_t off);

/* Every read of stored model bytes: exactly want bytes at pos into iov,
 * from byte skip of iov[0] on; want or a negative errno (-EIO if the
 * source ends first). The leading iovecs O_DIRECT can take (position,
 * buffer and length multiples of APB_ALIGN) go through the direct
 * descriptor when there is one, the rest through the page cache. */
long apb_source_preadv(const struct apb_source *s, uint64_t pos,
		       const struct iovec *iov, int iovcnt, size_t skip,
		       size_t want);

/* Open a second, O_DIRECT descriptor on the same open file (not its path,
 * which may name another file by now). 0, or a negative errno and the
 * source stays buffered: -EINVAL where the filesystem has no O_DIRECT,
 * -ESTALE if /proc gave another file. Not thread-safe: call it before the
 * source is shared. */
int apb_source_direct_io(struct apb_source *s);

#endif
